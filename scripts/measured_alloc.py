#!/usr/bin/env python3
"""Measured bit allocation for a byte budget (the method of `tessera quantize --allocate measured`, through the CLI).

For every matrix of a llama-family package and every scheme of a ladder, quantize the package with
that one matrix changed (all the others at the base scheme), measure the KLD against the source on
the CALIBRATION text, then pick the allocation greedily by dKLD/dbytes (per matrix, any step up its
ladder) within --max-bytes, assuming the single-matrix deltas add up. The plan is printed as
--override rules and checked by quantizing it (the budget is shrunk by the overshoot, if any).
quantizer/README.md "Measured allocation" has the results and the limits (cost: one quantize +
one verify per candidate; the deltas do not add exactly).

  scripts/measured_alloc.py --tessera build/app/tessera --src s260k-f32 --calib ts_calib.txt --ctx 128 \
      --max-bytes 258656 --work /tmp/alloc-s

Never pass the evaluation text as --calib: every decision is made on the calibration text.
"""
import argparse
import json
import os
import subprocess
import sys


def shapes(src):
    a = json.load(open(os.path.join(src, "manifest.json")))["arch"]
    h, f, hd = a["hidden"], a["ffn"], a["head_dim"]
    q, kv = a["heads"] * hd, a["kv_heads"] * hd
    m = {"embedding/token_embd": (a["vocab"], h)}
    for i in range(a["layers"]):
        for n, rc in {"attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q),
                      "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}.items():
            m[f"block_{i}/{n}"] = rc
    if not a.get("tie_embeddings", False):
        m["lm/output"] = (a["vocab"], h)
    return m


def fit(s, k):  # recipes.cc FitGroup: halve the group while that strictly reduces the padding
    t, g = s.rsplit("-g", 1)
    g = best = int(g)
    pad = lambda x: (k + x - 1) // x * x
    while g // 2 >= 32:
        g //= 2
        if pad(g) < pad(best):
            best = g
    return f"{t}-g{best}"


def nbytes(s, r, k):  # recipes.cc SchemeBytes for the symmetric int schemes (f16 scales)
    t, g = fit(s, k).rsplit("-g", 1)
    g = int(g)
    kp = (k + g - 1) // g * g
    return r * kp * {"int4": 4, "int4nl": 4, "int6": 6, "int8": 8}[t] // 8 + r * (kp // g) * 2


class Runner:
    def __init__(self, o):
        self.o = o
        os.makedirs(o.work, exist_ok=True)
        self.cache_f = os.path.join(o.work, "cache.json")
        self.cache = json.load(open(self.cache_f)) if os.path.exists(self.cache_f) else {}

    def run(self, overrides, text):
        o = self.o
        key = text + "|" + " ".join(overrides)
        if key not in self.cache:
            out = os.path.join(o.work, "pkg")
            cmd = [o.tessera, "quantize", o.src, "-o", out, "--recipe", o.base, "--calib", o.calib,
                   "--calib-ctx", str(o.ctx), "--force"]
            for r in overrides:
                cmd += ["--override", r]
            subprocess.run(cmd, check=True, capture_output=True)
            v = subprocess.run([o.tessera, "verify", out, "--base", o.src, "--text", text, "--ctx", str(o.ctx), "--json",
                                "--no-tensors"], check=True, capture_output=True, text=True,
                               env=dict(os.environ, TESSERA_INT8_ACT="0"))
            d = json.loads(v.stdout)
            self.cache[key] = {k: d[k] for k in ("package_bytes", "kld_mean", "kld_stderr", "top1", "ppl")}
            json.dump(self.cache, open(self.cache_f, "w"), indent=0)
        return self.cache[key]


def solve(options, budget):
    """options: matrix -> [(scheme, dkld, dbytes)] incl. the base (.., 0, 0). Greedy by -dKLD/dbytes."""
    opts = {m: sorted(o, key=lambda x: x[2]) for m, o in options.items()}
    cur = {m: 0 for m in opts}
    spent = sum(o[0][2] for o in opts.values())
    while True:
        best = None
        for m, o in opts.items():
            c = o[cur[m]]
            for j in range(cur[m] + 1, len(o)):
                dk, db = o[j][1] - c[1], o[j][2] - c[2]
                if dk < 0 and spent + db <= budget and db > 0 and (best is None or -dk / db > best[0]):
                    best = (-dk / db, m, j, db)
        if best is None:
            return {m: opts[m][cur[m]][0] for m in opts}, spent
        cur[best[1]] = best[2]
        spent += best[3]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tessera", default="build/app/tessera")
    p.add_argument("--src", required=True, help="source package (f16 / f32)")
    p.add_argument("--calib", required=True, help="calibration text (GPTQ statistics and every KLD decision)")
    p.add_argument("--ctx", type=int, default=256, help="--calib-ctx and verify --ctx")
    p.add_argument("--max-bytes", type=int, required=True, help="the whole package, as tessera quantize --max-bytes")
    p.add_argument("--base", default="int4nl-g32", help="recipe every matrix starts from")
    p.add_argument("--ladder", default="int6-g64,int6-g32,int8-g32", help="schemes each matrix may move to")
    p.add_argument("--only", default="", help="comma-separated substrings: measure only these matrices")
    p.add_argument("--work", required=True, help="directory for the candidate package and the result cache")
    o = p.parse_args()
    R = Runner(o)
    mats = shapes(o.src)
    base_scheme = o.base  # a plain recipe: its name is its scheme
    base = R.run([], o.calib)
    print(f"base {o.base}: {base['package_bytes']} bytes, calibration KLD {base['kld_mean']:.6f}", flush=True)
    options = {}
    for m, (r, k) in mats.items():
        options[m] = [(base_scheme, 0.0, 0)]
        if o.only and not any(s in m for s in o.only.split(",")):
            continue
        seen = {fit(base_scheme, k)}
        for s in o.ladder.split(","):
            if fit(s, k) in seen:
                continue
            seen.add(fit(s, k))
            res = R.run([f"{m}={s}"], o.calib)
            dk, db = res["kld_mean"] - base["kld_mean"], nbytes(s, r, k) - nbytes(base_scheme, r, k)
            options[m].append((s, dk, db))
            print(f"{m:24s} {s:11s} dKLD {dk:+.6f} dbytes {db:+8d}  {1e9 * -dk / db if db else 0:8.2f} e-9/byte", flush=True)
    budget = o.max_bytes - base["package_bytes"]
    while True:
        plan, spent = solve(options, budget)
        ov = [f"{m}={s}" for m, s in plan.items() if s != base_scheme]
        res = R.run(ov, o.calib)
        if res["package_bytes"] <= o.max_bytes:
            break
        budget -= res["package_bytes"] - o.max_bytes
    print(f"plan: {res['package_bytes']} bytes, calibration KLD {res['kld_mean']:.6f} +- {res['kld_stderr']:.6f}")
    print("overrides: " + " ".join(f"--override '{r}'" for r in ov))
    json.dump({"overrides": ov, "calib": res, "base": base}, open(os.path.join(o.work, "plan.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
