"""Experiment statistics by simulation: peeking false positives, power at the MDE, bandit regret.

Bandits: 3 and 5 arms over 20,000 requests, Thompson (binary and continuous rewards) and
epsilon-greedy (fixed and decaying), each against a uniform split and the best fixed arm.

Run: /work/venv/bin/python benchmarks/experiments.py [--quick]
Prints tables and writes benchmarks/out/experiments.png. Seeds are fixed, so figures repeat exactly.
The A/A and power simulations use a vectorised twin of `msprt_proportions` (same formula; the test
suite checks the twin against the library function look by look).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from modelserve.experiments.bandits import EpsilonGreedy, GaussianThompsonSampling, ThompsonSampling
from modelserve.experiments.sequential import mixing_tau, sequential_sample_size
from modelserve.experiments.stats import sample_size_proportions

ALPHA = 0.05
STEP = 100
OUT = Path(__file__).parent / "out" / "experiments.png"


def cumulative(p_a: float, p_b: float, experiments: int, looks: int, step: int, seed: int):
    rng = np.random.default_rng(seed)
    s_a = rng.binomial(step, p_a, size=(experiments, looks)).cumsum(axis=1)
    s_b = rng.binomial(step, p_b, size=(experiments, looks)).cumsum(axis=1)
    n = np.broadcast_to(step * np.arange(1, looks + 1), s_a.shape)
    return s_a, s_b, n


def rejections(s_a, s_b, n, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(naive z-test rejects, mSPRT rejects) at every look."""
    pooled = (s_a + s_b) / (2 * n)
    variance = pooled * (1 - pooled) * 2 / n
    estimate = (s_b - s_a) / n
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        z = estimate / np.sqrt(variance)
        llr = 0.5 * np.log(variance / (variance + t2)) + t2 * estimate**2 / (2 * variance * (variance + t2))
    naive = np.abs(np.nan_to_num(z)) > norm.isf(ALPHA / 2)
    return naive, np.nan_to_num(llr, nan=-np.inf) >= math.log(1 / ALPHA)


def aa_section(experiments: int) -> dict[str, np.ndarray]:
    s_a, s_b, n = cumulative(0.10, 0.10, experiments, looks=100, step=STEP, seed=1)
    naive, seq = rejections(s_a, s_b, n, mixing_tau(0.05, 0.10))
    naive_curve = np.maximum.accumulate(naive, axis=1).mean(axis=0)
    seq_curve = np.maximum.accumulate(seq, axis=1).mean(axis=0)
    print(f"\nA/A, 10% baseline, {experiments:,} experiments, peek every {STEP} up to 10,000 per arm")
    print(f"{'test (tau = absolute MDE on 10%)':<50}{'false-positive rate':>20}")
    print(f"{'naive z-test, one look at 10,000':<50}{naive[:, -1].mean():>20.3f}")
    print(f"{'naive z-test, stop at first p < 0.05':<50}{naive_curve[-1]:>20.3f}")
    print(f"{'mSPRT, tau = 5% MDE, stop at first p < 0.05':<50}{seq_curve[-1]:>20.3f}")
    wide = {}
    for mde in (0.2, 1.0):
        _, other = rejections(s_a, s_b, n, mixing_tau(mde, 0.10))
        wide[mde] = np.maximum.accumulate(other, axis=1).mean(axis=0)
        label = f"mSPRT, tau = {mde:.0%} MDE, stop at first p < 0.05"
        print(f"{label:<50}{wide[mde][-1]:>20.3f}")
    return {"looks": n[0], "naive": naive_curve, "seq": seq_curve, "seq20": wide[0.2]}


def power_section(experiments: int) -> dict[str, object]:
    print("\nPower (alpha 0.05, planned power 0.80)")
    print(f"{'scenario':<58}{'n per arm':>10}{'power':>8}")
    rng = np.random.default_rng(7)
    for n in (28_878, math.ceil(sample_size_proportions(0.10, 0.05))):
        a, b = rng.binomial(n, 0.10, size=40_000), rng.binomial(n, 0.105, size=40_000)
        pooled = (a + b) / (2 * n)
        z = (b - a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
        label = "10% -> 10.5% (+5% rel), fixed z-test, one look"
        print(f"{label:<58}{n:>10,}{np.mean(np.abs(z) > norm.isf(0.025)):>8.3f}")
    tau = mixing_tau(0.2, 0.10)
    fixed = math.ceil(sample_size_proportions(0.10, 0.2))
    planned = math.ceil(sequential_sample_size(0.02, 0.1 * 0.9 + 0.12 * 0.88, tau=tau))
    looks = math.ceil(2 * planned / STEP)
    s_a, s_b, n = cumulative(0.10, 0.12, experiments, looks=looks, step=STEP, seed=3)
    naive, seq = rejections(s_a, s_b, n, tau)
    seq_curve = np.maximum.accumulate(seq, axis=1).mean(axis=0)
    at = {k: min(math.ceil(k / STEP), looks) - 1 for k in (fixed, planned)}
    label = "10% -> 12% (2 pts), fixed z-test, one look at fixed plan"
    print(f"{label:<58}{fixed:>10,}{naive[:, at[fixed]].mean():>8.3f}")
    print(f"{'10% -> 12%, mSPRT monitored up to the fixed plan':<58}{fixed:>10,}{seq_curve[at[fixed]]:>8.3f}")
    print(
        f"{'10% -> 12%, mSPRT monitored up to its own plan':<58}{planned:>10,}{seq_curve[at[planned]]:>8.3f}"
    )
    return {
        "looks": n[0],
        "seq": seq_curve,
        "naive_single": naive.mean(axis=0),
        "fixed": fixed,
        "planned": planned,
    }


def run_bandit(policy, rates: dict[str, float], steps: int, seed: int, sd: float | None = None) -> np.ndarray:
    """Cumulative expected regret (shortfall against always serving the best fixed arm).

    Binary rewards are Bernoulli(rate); with `sd`, rewards are continuous: N(rate, sd^2).
    """
    rng = np.random.default_rng(seed)
    best = max(rates.values())
    regret = np.empty(steps)
    noise = rng.random(steps) if sd is None else rng.normal(0.0, sd, size=steps)
    for i, e in enumerate(noise):
        arm = policy.choose()
        regret[i] = best - rates[arm]
        policy.update(arm, float(e < rates[arm]) if sd is None else rates[arm] + float(e))
    return regret.cumsum()


BANDIT_ARMS = (
    {"A": 0.10, "B": 0.12, "C": 0.15},
    {"A": 0.10, "B": 0.11, "C": 0.12, "D": 0.13, "E": 0.15},
)


def _policy(kind: str, arms: list[str], rng: np.random.Generator):
    if kind == "thompson":
        return ThompsonSampling(arms, rng=rng, draws=2_000)
    if kind == "thompson (continuous)":
        return GaussianThompsonSampling(arms, rng=rng, draws=2_000)
    if kind == "epsilon_greedy 0.1":
        return EpsilonGreedy(arms, rng=rng, epsilon=0.1)
    return EpsilonGreedy(arms, rng=rng, epsilon=0.5, epsilon_decay=0.001)


def bandit_section(steps: int, runs: int) -> dict[str, object]:
    print(
        f"\nBandit regret (expected, {steps:,} requests, mean of {runs} runs; floor 1%, >=100 outcomes/arm)."
        "\nRegret is the shortfall against always serving the best fixed arm (whose regret is 0);"
        "\n'reward kept' is the policy's expected reward as a share of the best fixed arm's."
        "\nContinuous rows: rewards N(rate, 0.3^2) instead of Bernoulli(rate)."
    )
    print(f"{'arms (true rates)':<28}{'policy':<27}{'regret':>9}{'vs uniform':>12}{'reward kept':>13}")
    curves: dict[str, np.ndarray] = {}
    for rates in BANDIT_ARMS:
        mean_rate, best = float(np.mean(list(rates.values()))), max(rates.values())
        uniform = steps * (best - mean_rate)
        name = "/".join(f"{v:.2f}" for v in rates.values())
        print(f"{name:<28}{'uniform split':<27}{uniform:>9.1f}{1.0:>12.2f}{mean_rate / best:>13.1%}")
        print(f"{'':<28}{'best fixed arm':<27}{0.0:>9.1f}{0.0:>12.2f}{1.0:>13.1%}")
        for kind in ("thompson", "thompson (continuous)", "epsilon_greedy 0.1", "epsilon_greedy 0.5, decay"):
            totals = []
            for r in range(runs):
                policy = _policy(kind, list(rates), np.random.default_rng(100 + r))
                sd = 0.3 if kind == "thompson (continuous)" else None
                totals.append(run_bandit(policy, rates, steps, seed=200 + r, sd=sd))
            mean_curve = np.mean(totals, axis=0)
            kept = 1 - mean_curve[-1] / (steps * best)
            print(f"{'':<28}{kind:<27}{mean_curve[-1]:>9.1f}{mean_curve[-1] / uniform:>12.2f}{kept:>13.1%}")
            curves[f"{name} {kind}"] = mean_curve
        curves[f"{name} uniform split"] = np.arange(1, steps + 1) * (best - mean_rate)
    policy = ThompsonSampling(["A", "B", "C"], rng=np.random.default_rng(0))
    calls = 200_000
    start = time.perf_counter()
    for _ in range(calls):
        policy.choose(0.5)
    print(
        f"\nThompsonSampling.choose(bucket): {(time.perf_counter() - start) / calls * 1e9:,.0f} ns per call"
    )
    return curves


def plot(aa: dict, power: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.plot(aa["looks"], aa["naive"], label="naive z-test, stop at first p<0.05")
    ax.plot(aa["looks"], aa["seq"], label="mSPRT, tau = 5% rel MDE")
    ax.plot(aa["looks"], aa["seq20"], label="mSPRT, tau = 20% rel MDE")
    ax.axhline(ALPHA, color="grey", ls="--", lw=1, label="alpha")
    ax.set(
        title="A/A false positives with peeking",
        xlabel="outcomes per arm",
        ylabel="P(ever declared a winner)",
    )
    ax.legend()
    ax = axes[1]
    ax.plot(power["looks"], power["naive_single"], label="fixed z-test, one look at n")
    ax.plot(power["looks"], power["seq"], label="mSPRT monitored up to n")
    ax.axhline(0.8, color="grey", ls="--", lw=1)
    ax.axvline(power["fixed"], color="C0", ls=":", lw=1, label=f"fixed plan {power['fixed']:,}")
    ax.axvline(power["planned"], color="C1", ls=":", lw=1, label=f"sequential plan {power['planned']:,}")
    ax.set(title="Power: 10% -> 12%", xlabel="outcomes per arm", ylabel="power")
    ax.legend()
    ax = axes[2]
    for label, curve in curves.items():
        if label.startswith("0.10/0.12/0.15 "):
            ax.plot(np.arange(1, len(curve) + 1), curve, label=label.split(" ", 1)[1])
    ax.set(title="Regret, 3 arms (0.10/0.12/0.15)", xlabel="requests", ylabel="cumulative regret")
    ax.legend()
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"\nwrote {OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulations (a smoke run)")
    args = parser.parse_args()
    experiments, steps, runs = (500, 5_000, 3) if args.quick else (4_000, 20_000, 10)
    aa = aa_section(experiments)
    power = power_section(experiments)
    curves = bandit_section(steps, runs)
    try:
        plot(aa, power, curves)
    except ModuleNotFoundError as exc:  # matplotlib comes with the `dev` extra; the tables stand alone
        print(f"\nno plot: {exc}")


if __name__ == "__main__":
    main()
