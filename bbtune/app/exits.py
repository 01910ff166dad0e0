"""The exit code `bbtune tune` returns for each way a run ends, and the line that says how it ended.

| ending | exit | the result |
|---|---|---|
| budget: spent ``--budget-calls`` | 0 | what was asked for |
| converged: CMA-ES stopped improving before the budget | 0 | usable (more calls would not change it) |
| limit: a ``--remote-max-*`` limit stopped it | 3 | partial (best so far); raise the limit and ``--resume`` |
| flat: the training loss never moved | 4 | not usable: every candidate scored alike (scores missing, prompt unchanged) |
| gave up: a request failed after every retry | 5 | none; finished generations are checkpointed, ``--resume`` |

Bad input or flags exit 2; Ctrl-C exits 130.
"""
from __future__ import annotations

from bbtune.runs.endings import Ending
from bbtune.runs.metrics import RunMetrics

BAD_INPUT = 2
INTERRUPTED = 130
EXIT_CODES = {Ending.BUDGET: 0, Ending.CONVERGED: 0, Ending.LIMIT: 3, Ending.FLAT: 4, Ending.GAVE_UP: 5}

EPILOG = "exit codes: 0 budget spent or converged; 2 bad input or flags; 3 stopped by a --remote-max-* limit " \
         "(partial result, raise it and --resume); 4 the training loss never moved (result not usable); 5 a request " \
         "failed after every retry (raise --remote-max-retries, or --resume later); 130 interrupted"


def exit_code(ending: Ending | str) -> int:
    return EXIT_CODES[Ending(ending)]


def ending_line(metrics: RunMetrics, budget_calls: int, popsize: int) -> str:
    """One line that says how the run ended and, where the result is not what was asked for, what to do."""
    ending, calls = metrics.ending, metrics.calls
    if ending is Ending.LIMIT:
        return f"stopped by a limit after {calls} of {budget_calls} calls: {metrics.stopped_by} (partial result)"
    if ending is Ending.FLAT:
        check = ("a metric on generated answers moves in steps: right on no training question, no candidate moves "
                 "it (try --answer-scoring reference, or --answer-metric f1)" if metrics.answer_metric is not None else
                 "check the label words reach the scores (missing_rate in metrics.json)")
        return (f"the training loss never moved in {calls} calls (every candidate scored like the start point): the "
                f"result is not usable; {check}, and that candidates differ (hard mode: --hard-change)")
    if ending is Ending.CONVERGED:
        reasons = ", ".join(metrics.stop_reasons) or "no progress"
        return f"converged early after {calls} of {budget_calls} calls ({reasons}); the result is usable"
    note = budget_rounding(budget_calls, popsize)
    return f"budget spent: {calls} calls" + (f" ({note})" if note else "")


def budget_rounding(budget_calls: int, popsize: int) -> str | None:
    """What a budget that is not a multiple of the population becomes (None when it is one)."""
    used = budget_calls // popsize * popsize
    if used == budget_calls:
        return None
    return (f"--budget-calls {budget_calls} is not a multiple of --popsize {popsize}: the run makes {used} calls "
            f"({used // popsize} generations)")


def gave_up_line(err: BaseException, max_retries: int, run_dir: str) -> str:
    """A request that failed after every retry: the count, and the flags that change the outcome."""
    return (f"gave up after {max_retries} retries (--remote-max-retries {max_retries}): {err}; raise "
            f"--remote-max-retries, or continue later with `bbtune tune --resume {run_dir}` (finished generations "
            "are checkpointed)")
