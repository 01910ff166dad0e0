"""bbtune's tests, a folder per package (tests/backends/ for bbtune/backends/, ...); benchmarks/ and docs/ check
the scripts and the site, and the root holds the public face and the project as a whole. Folders are packages, so
two may hold files of the same name and shared helpers import by module (`tests.conftest`,
`tests.backends.test_remote_backend`)."""
