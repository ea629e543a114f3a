"""The loop every suite runs: round after round, every target once per
round with the order alternating (to even out drift), a target's failure
kept to its own cells, and the load seen by the busiest target reported
per round."""

from .proc import Failed
from .results import Metric

# The load rows every suite records for each target and round.
LOAD_METRICS = [
    Metric("background_busy_pct", "CPU busy just before the target", "%", "info"),
    Metric("others_cpu_pct", "CPU used by other processes during the target", "%", "info"),
    Metric("steal_pct", "CPU stolen by the hypervisor during the target", "%", "info"),
]


def run_rounds(ctx, suite, progress, steps, target, backends):
    """Call `target(rnd, t)` (it returns the CPU share taken by other
    processes and stolen by the hypervisor while it ran) for every round
    and target. `steps(t)` are the target's planned steps: the progress
    line skips to their end whatever happened. Processes other than
    `backends` are stopped after each target. Returns the targets that
    failed somewhere."""
    failed = []
    for rnd in range(1, ctx.rounds + 1):
        order = list(suite.targets)
        if rnd % 2 == 0:
            order.reverse()
        worst = (0.0, 0.0, "")
        for t in order:
            first = progress.step + 1
            try:
                others, steal = target(rnd, t)
                if others + steal > worst[0] + worst[1]:
                    worst = (others, steal, t)
            except Failed as e:
                progress.say(f"  {t}: {e}; its cells in round {rnd} stay empty")
                suite.notes.append(f"round {rnd}, {t}: {e}")
                failed.append(t)
            finally:
                ctx.procs.stop_all_but(backends)
            progress.skip_to(first + len(steps(t)))
        ctx.round_load(suite, rnd, worst)
    return failed
