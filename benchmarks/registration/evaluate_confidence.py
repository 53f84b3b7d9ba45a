"""How well the confidence separates failed registrations, on held-out draws, against
a fitted alternative.

Reads the rows that ``compare_settings.py`` dumps (``DUMP=file.json``, default
settings; the seed is read from ``_s<seed>_`` in the file name). A section failed
when it missed the hard-set target (median cell error > 60 um or 95th percentile >
150 um). Prints, for the stored confidence (``api.confidence_score``):

- the AUC (the probability that a failure has lower confidence than a good section)
  and how many failures and good sections fall below 0.5 (flagged);

and for an alternative: the same factors, with the spread factor replaced by a
logistic term in the logs of the fit spread, the mapped midline's angle, the
anisotropy and the plane sensitivity (class-balanced, L2-penalised, C = 1 on
standardised features), fitted leave-one-seed-out on ``--train`` and, fitted on all
of ``--train``, scored on ``--test``. It was measured and not adopted (see
benchmarks/registration/RESULTS_registration.md).

Usage, from the repository root::

    PYTHONPATH=src python benchmarks/registration/evaluate_confidence.py \
        --train 'dumps/cal_s[1-6]_?.json' --test 'dumps/cal_s[7-9]_?.json' 'dumps/cal_s1[0-2]_?.json'
"""

import argparse
import glob
import json
import re
import sys

import numpy as np
from scipy.optimize import minimize

from napari_brainatlas.register import api

FEATURES = ("log_spread", "log_midline", "log_anisotropy", "log_sensitivity")


def load(patterns):
    rows = []
    for pat in patterns:
        for f in sorted(glob.glob(pat)):
            seed = int(re.search(r"_s(\d+)_", f).group(1))
            with open(f) as fh:
                dump = json.load(fh)
            for cases in dump.values():
                for c, r in cases.items():
                    m = dict(r["metrics"])
                    rows.append(
                        {
                            "seed": seed,
                            "case": int(c),
                            "metrics": m,
                            "confidence": r["confidence"],
                            "fail": bool(r["median_um"] > 60.0 or r["p95_um"] > 150.0),
                        }
                    )
    return rows


def logit_features(m: dict):
    """Logs of the fit spread (um), the mapped midline's angle (deg, + 0.1), the
    anisotropy and the plane sensitivity; None without a spread or a sensitivity."""
    sp, se = m.get("fit_spread_um"), m.get("plane_sensitivity")
    if sp is None or se is None or not (np.isfinite(sp) and np.isfinite(se)):
        return None
    return [
        np.log(max(sp, 1.0)),
        np.log(0.1 + max(m.get("midline_angle_deg", 0.0), 0.0)),
        np.log(max(m.get("anisotropy", 1.0), 1.0)),
        np.log(max(se, 1e-3)),
    ]


def features(m: dict) -> np.ndarray:
    return np.array(logit_features(m), dtype=float)


def fit_logit(X, y, C=1.0):
    """L2-penalised logistic regression of y (1 = good) with balanced class weights;
    returns (intercept, coefficients) for the standardised X and (mu, sd)."""
    mu, sd = X.mean(0), X.std(0)
    Z = (X - mu) / sd
    w = np.where(y, len(y) / (2.0 * y.sum()), len(y) / (2.0 * (~y).sum()))
    t = np.where(y, 1.0, -1.0)

    def f(b):
        z = b[0] + Z @ b[1:]
        loss = np.logaddexp(0.0, -t * z)
        sig = 1.0 / (1.0 + np.exp(t * z))
        g0 = -(w * t * sig).sum()
        g = -(Z * (w * t * sig)[:, None]).sum(0)
        return 0.5 * b[1:] @ b[1:] + C * (w * loss).sum(), np.concatenate([[C * g0], b[1:] + C * g])

    b = minimize(f, np.zeros(1 + X.shape[1]), jac=True, method="L-BFGS-B").x
    return b, mu, sd


def raw(b, mu, sd):
    """The model in raw units: intercept, coefficients."""
    coef = b[1:] / sd
    return float(b[0] - coef @ mu), coef


def auc(conf, fail):
    """Probability that a failure has lower confidence than a good section."""
    pos, neg = conf[fail], conf[~fail]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(np.mean([(p < neg).mean() + 0.5 * (p == neg).mean() for p in pos]))


def confidence_with(rows, logit):
    """The confidence with the spread factor replaced by the logistic term ``logit``
    (where the features exist; None: the shipped confidence)."""
    out = []
    for r in rows:
        m = dict(r["metrics"])
        x = logit_features(m) if logit is not None else None
        if x is None:
            out.append(api.confidence_score(m))
            continue
        m.pop("fit_spread_um")
        z = logit["intercept"] + sum(logit[k] * v for k, v in zip(FEATURES, x))
        out.append(api.confidence_score(m) / (1.0 + np.exp(-z)))
    return np.array(out)


def report(name, conf, fail):
    flag = conf < 0.5
    print(
        f"{name:44s} AUC {auc(conf, fail):.3f}   at 0.5: failures flagged {int((flag & fail).sum())}/"
        f"{int(fail.sum())}, good sections flagged {int((flag & ~fail).sum())}/{int((~fail).sum())}"
    )


def model_of(rows):
    ok = [r for r in rows if logit_features(r["metrics"]) is not None]
    X = np.array([features(r["metrics"]) for r in ok])
    y = np.array([not r["fail"] for r in ok])
    b, mu, sd = fit_logit(X, y)
    b0, coef = raw(b, mu, sd)
    return {"intercept": b0, **{k: float(c) for k, c in zip(FEATURES, coef)}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="*", default=[])
    args = ap.parse_args(argv)
    train = load(args.train)
    if not train or not any(r["fail"] for r in train) or all(r["fail"] for r in train):
        sys.exit(
            f"error: --train {' '.join(args.train)} holds {len(train)} sections; it needs dumps of "
            "compare_settings.py (DUMP=...) with both failed and good sections"
        )
    fail = np.array([r["fail"] for r in train])
    seeds = np.array([r["seed"] for r in train])
    print(
        f"train: {len(train)} sections, {int(fail.sum())} failures, seeds {sorted(set(seeds.tolist()))}"
    )
    report("confidence as stored (train)", np.array([r["confidence"] for r in train]), fail)
    report("shipped confidence recomputed (train)", confidence_with(train, None), fail)
    loso = np.zeros(len(train))
    for s in np.unique(seeds):
        m = model_of([r for r, k in zip(train, seeds) if k != s])
        held = seeds == s
        loso[held] = confidence_with([r for r, k in zip(train, held) if k], m)
    report("logistic term, leave one seed out (train)", loso, fail)
    model = model_of(train)
    if args.test:
        test = load(args.test)
        if not test:
            sys.exit(f"error: --test {' '.join(args.test)} matches no dumped sections")
        tf = np.array([r["fail"] for r in test])
        print(
            f"test: {len(test)} sections, {int(tf.sum())} failures, seeds {sorted({r['seed'] for r in test})}"
        )
        report("confidence as stored (test)", np.array([r["confidence"] for r in test]), tf)
        report("logistic term fitted on train (test)", confidence_with(test, model), tf)
    print("logistic term = {" + ", ".join(f'"{k}": {v:.4f}' for k, v in model.items()) + "}")
    print("reproduce: PYTHONPATH=src python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])))


if __name__ == "__main__":
    main()
