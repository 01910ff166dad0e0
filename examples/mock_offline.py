"""Hard-prompt tuning through the remote backend against the offline mock server, faults and all.

Starts the mock (an OpenAI-compatible server over SmolLM2 or the tiny model) in a thread, tunes a hard prompt
on the built-in sentiment set through `RemoteBackend`, once on a clean server and once on a server that
rate-limits, fails and drops connections, and shows both runs end with the same prompt; then reruns from the
cache and shows it paid zero requests. No network, no key.

    python examples/mock_offline.py                 # SmolLM2-135M (a few minutes on a laptop CPU)
    python examples/mock_offline.py --model tiny    # the random tiny model: seconds, numbers meaningless

The same server from a shell: ``python -m mock_server --model smollm2 --port 8000``.
"""
from __future__ import annotations

import argparse
import json
import tempfile

from bbtune import RemoteBackend, RemoteConfig, TaskConfig, TuneConfig, tune
from mock_server import FaultConfig, FaultRule, MockServer, ServerConfig, shared_scorer

FAULTS = FaultConfig(rules=(FaultRule("drop", every=13, limit=1), FaultRule("429", every=5), FaultRule("500", every=7)),
                     latency_s=0.005, retry_after_s=0.1, seed=0)


def run(url: str, args: argparse.Namespace, cache_dir: str, config: TuneConfig, task):  # noqa: ANN001, ANN201
    remote = RemoteConfig(base_url=url, model=args.model, local_model=args.model, mode=args.mode, top_k=20,
                          concurrency=8, cache_dir=cache_dir, max_requests=2000)
    with RemoteBackend(remote) as backend:
        run = tune(task, backend, config=config, progress=False)
        return run, backend.stats.as_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (default) or tiny")
    parser.add_argument("--budget", type=int, default=30, help="model calls for the search")
    parser.add_argument("--k", type=int, default=4, help="training (and dev) examples per class")
    parser.add_argument("--mode", default="echo", choices=["echo", "top_logprobs", "chat", "prompt_embeds"],
                        help="scoring mode (echo: exact label log-probs; top_logprobs: bounded by the 20th value)")
    args = parser.parse_args(argv)
    task = TaskConfig(data="demo", k=args.k, test_limit=16).load()
    config = TuneConfig(mode="soft" if args.mode == "prompt_embeds" else "hard", budget_calls=args.budget, popsize=6, prompt_tokens=5, intrinsic_dim=50,
                        eval_every=30, seed=7)
    scorer = shared_scorer(args.model)  # both servers share one loaded model
    server = ServerConfig(model=args.model, port=0, max_logprobs=20)
    with tempfile.TemporaryDirectory() as cache, MockServer(server, scorer=scorer) as clean, \
            MockServer(server, FAULTS, scorer=scorer) as faulty:
        first, stats1 = run(clean.url, args, cache, config, task)
        second, stats2 = run(faulty.url, args, "", config, task)
        third, stats3 = run(clean.url, args, cache, config, task)
        print(f"clean run:   prompt {first.prompt_text!r}  dev acc {first.metrics.dev_acc:.3f}  "
              f"test acc {first.metrics.test_acc or float('nan'):.3f}  requests {stats1['requests']}")
        print(f"faulty run:  prompt {second.prompt_text!r}  dev acc {second.metrics.dev_acc:.3f}  "
              f"requests {stats2['requests']} (retries {stats2['retries']}; faults {json.dumps(faulty.stats()['faults'])})")
        print(f"cached rerun: prompt {third.prompt_text!r}  requests {stats3['requests']}  "
              f"cache hits {stats3['cache_hits']}")
        print("same result with and without faults:", first.curve == second.curve and first.prompt_text == second.prompt_text)
        if args.mode != "echo":
            print(f"labels outside the top-20, bounded by the 20th value: {stats1['missing_rate']:.1%}")


if __name__ == "__main__":
    main()
