#!/usr/bin/env python3
"""Merging a model larger than the memory it is given (issue 8): `ftk merge-lora` against peft's
merge_and_unload + save_pretrained, side by side in one run, on a real shape with random weights.

Usage: .venv/bin/python tests/bench/merge_memory.py [--shape 1b] [--cap-mib 2048] [--repeats 3]
       [--ftk build/bin/ftk] [--workdir DIR]

The base is written in float32 (Llama-3.2-1B's config: 1.24G parameters, 4.9 GB, tied embeddings;
or `100m` for a quick run), with a peft LoRA adapter (r 16, alpha 32, every linear layer, A and B
random so the delta is not zero). Each tool merges it to bfloat16 in 1 GB shards:
  ftk:  ftk merge-lora --model BASE --adapter AD --output OUT --dtype bfloat16 --shard-size 1GB
  peft: AutoModelForCausalLM.from_pretrained(BASE, dtype=float32) -> PeftModel.from_pretrained
        -> merge_and_unload() -> .to(bfloat16) -> save_pretrained(OUT, max_shard_size="1GB")
Each runs once with no limit (wall time; peak anonymous memory, RssAnon sampled every 10 ms from
/proc, and the peak RSS the kernel counts, which includes the mapped base's file-backed pages) and
once in a memory cgroup capped at --cap-mib (default: 40% of the base's size, so the model does not
fit): that run either completes or is killed by the kernel. The cap needs root and a cgroup memory
controller (v1 or v2); without one the capped runs are left out and the script says so.
Repeats are interleaved (ftk, peft, ftk, ...); times are medians. The two merged models are then
compared tensor by tensor (bf16 units in the last place), and the ftk one is loaded by
transformers and run on 8 tokens against the peft one.
Prints a markdown table (docs/PERF.md keeps it). Needs disk: the base plus two merged copies
(about 10 GB for 1b) under --workdir (default: a temporary directory, removed at the end)."""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, threading, time

import numpy as np

SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab, tied)
    "1b": (2048, 16, 32, 8, 8192, 128256, True),      # Llama-3.2-1B
    "100m": (768, 12, 12, 12, 2048, 32000, True),
}
LIN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 16, 32

PEFT_CHILD = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, ad, out = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
m = PeftModel.from_pretrained(m, ad).merge_and_unload()
m.to(torch.bfloat16).save_pretrained(out, max_shard_size="1GB")
"""


def shapes_of(shape):
    C, L, H, KV, F, V, tied = shape
    hd = C // H
    lin = {"q_proj": (C, C), "k_proj": (KV * hd, C), "v_proj": (KV * hd, C), "o_proj": (C, C),
           "gate_proj": (F, C), "up_proj": (F, C), "down_proj": (C, F)}
    return C, L, H, KV, F, V, tied, lin


def write_base(d, shape, rng):
    """A float32 Llama checkpoint written a layer per shard (never more than a layer in memory)."""
    from safetensors.numpy import save_file
    C, L, H, KV, F, V, tied, lin = shapes_of(shape)
    os.makedirs(d)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": C // H, "intermediate_size": F,
           "vocab_size": V, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "hidden_act": "silu", "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "attention_bias": False, "mlp_bias": False, "dtype": "float32"}
    json.dump(cfg, open(f"{d}/config.json", "w"), indent=1)
    shards, wmap, total = [], {}, 0

    def emit(tensors):
        nonlocal total
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(tensors, f"{d}/{name}", metadata={"format": "pt"})
        shards.append(name)
        for k, v in tensors.items():
            wmap[k] = name
            total += v.nbytes

    def rand(*s):
        return (rng.standard_normal(s, dtype=np.float32) * 0.02)

    emit({"model.embed_tokens.weight": rand(V, C), "model.norm.weight": np.ones(C, np.float32)})
    for i in range(L):
        t = {f"model.layers.{i}.input_layernorm.weight": np.ones(C, np.float32),
             f"model.layers.{i}.post_attention_layernorm.weight": np.ones(C, np.float32)}
        for m, s in lin.items():
            part = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            t[f"model.layers.{i}.{part}.{m}.weight"] = rand(*s)
        emit(t)
    if not tied:
        emit({"lm_head.weight": rand(V, C)})
    json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, open(f"{d}/model.safetensors.index.json", "w"))
    return total


def write_adapter(d, shape, rng):
    from safetensors.numpy import save_file
    C, L, H, KV, F, V, tied, lin = shapes_of(shape)
    os.makedirs(d)
    t = {}
    for i in range(L):
        for m, (o, n) in lin.items():
            part = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            p = f"base_model.model.model.layers.{i}.{part}.{m}"
            t[f"{p}.lora_A.weight"] = rng.standard_normal((R, n), dtype=np.float32) * (1 / np.sqrt(n))
            t[f"{p}.lora_B.weight"] = rng.standard_normal((o, R), dtype=np.float32) * 0.002
    save_file(t, f"{d}/adapter_model.safetensors", metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
               "target_modules": LIN, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
               "use_dora": False, "base_model_name_or_path": None}, open(f"{d}/adapter_config.json", "w"), indent=1)


class Cgroup:
    """A memory cgroup (v2 or v1) capped at `limit` bytes with no swap, or None when unavailable."""

    def __init__(self, limit):
        self.dir = None
        name = f"ftk-bench-{os.getpid()}"
        v2 = "/sys/fs/cgroup"
        v1 = "/sys/fs/cgroup/memory"
        try:
            if os.path.exists(f"{v2}/cgroup.controllers") and "memory" in open(f"{v2}/cgroup.subtree_control").read():
                self.dir, self.v = f"{v2}/{name}", 2
                os.mkdir(self.dir)
                self._w("memory.max", limit)
                if os.path.exists(f"{self.dir}/memory.swap.max"):
                    self._w("memory.swap.max", 0)
            elif os.path.exists(f"{v1}/memory.limit_in_bytes"):
                self.dir, self.v = f"{v1}/{name}", 1
                os.mkdir(self.dir)
                self._w("memory.limit_in_bytes", limit)
                if os.path.exists(f"{self.dir}/memory.memsw.limit_in_bytes"):
                    self._w("memory.memsw.limit_in_bytes", limit)
            else:
                self.why = "no cgroup memory controller"
        except OSError as e:
            self.why = f"cannot make a memory cgroup ({e.strerror}: {e.filename})"
            self.close()
            self.dir = None

    def _w(self, f, v):
        with open(f"{self.dir}/{f}", "w") as fh:
            fh.write(str(v))

    def enter(self):
        """Runs in the child before exec."""
        with open(f"{self.dir}/cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))

    def peak(self):
        f = "memory.peak" if self.v == 2 else "memory.max_usage_in_bytes"
        try:
            return int(open(f"{self.dir}/{f}").read())
        except OSError:
            return None

    def reset_peak(self):
        try:
            self._w("memory.peak" if self.v == 2 else "memory.max_usage_in_bytes", 0)
        except OSError:
            pass

    def close(self):
        if self.dir:
            for _ in range(50):
                try:
                    os.rmdir(self.dir)
                    return
                except OSError:
                    time.sleep(0.1)


def run(cmd, cg=None):
    """(ok, seconds, peak RssAnon MiB, cgroup peak MiB or None, last stderr line)."""
    peak = [0]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=(cg.enter if cg else None))
    err = []
    th = threading.Thread(target=lambda: err.append(p.stderr.read()))
    th.start()
    while p.poll() is None:
        try:
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    dt = time.monotonic() - t0
    th.join()
    ok = p.returncode == 0
    if p.returncode == -signal.SIGKILL:
        tail = "killed (SIGKILL: out of memory in the cgroup)"
    else:
        tail = err[0].decode(errors="replace").strip().splitlines()[-1:] if err and err[0] else []
        tail = tail[0] if tail else ""
    return ok, dt, peak[0] / 1024, (cg.peak() / 2**20 if cg and cg.peak() is not None else None), tail


def max_rss_mib(cmd):
    """Peak RSS as the kernel counts it (includes touched file-backed pages of the mapped base)."""
    with tempfile.NamedTemporaryFile("r") as tf:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name] + cmd, capture_output=True)
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
        return int(tf.read().split()[-1]) / 1024.0


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def bf16_ulps(a, b):
    ia, ib = a.view(np.int16).astype(np.int32), b.view(np.int16).astype(np.int32)
    ia = np.where(ia < 0, -32768 - ia, ia)
    ib = np.where(ib < 0, -32768 - ib, ib)
    d = np.abs(ia - ib)
    return int(d.max()), int((d > 0).sum())


def compare(ftk_out, peft_out):
    """Largest bf16 distance between the two merged models, and the ftk model's logits vs peft's."""
    from safetensors import safe_open
    def tensors(d):
        idx = f"{d}/model.safetensors.index.json"
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
        for f in files:
            with safe_open(f"{d}/{f}", "pt") as h:
                for k in h.keys():
                    yield k, h.get_tensor(k)
    import torch
    want = {}
    for k, v in tensors(peft_out):
        want[k] = v
    ulp, differ, n, keys = 0, 0, 0, 0
    for k, v in tensors(ftk_out):
        if k not in want:
            sys.exit(f"ftk merged model has {k}, peft's has not")
        w = want.pop(k)
        assert v.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and v.shape == w.shape, k
        u, d = bf16_ulps(v.view(torch.int16).numpy(), w.view(torch.int16).numpy())
        ulp, differ, n, keys = max(ulp, u), differ + d, n + v.numel(), keys + 1
    extra = [k for k in want if k != "lm_head.weight"]    # peft may save a tied head
    if extra:
        sys.exit(f"peft's merged model has tensors ftk's lacks: {extra[:5]}")
    from transformers import AutoModelForCausalLM
    ids = torch.arange(3, 11).unsqueeze(0)
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(ftk_out, dtype=torch.float32)(input_ids=ids).logits.double()
        b = AutoModelForCausalLM.from_pretrained(peft_out, dtype=torch.float32)(input_ids=ids).logits.double()
    return keys, n, ulp, differ, float((a - b).abs().max() / b.abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b", choices=SHAPES)
    ap.add_argument("--cap-mib", type=int, default=0, help="the cgroup's memory cap (default: 40%% of the base)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ftk", default="build/bin/ftk")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="ftk-merge-bench.")
    os.makedirs(work, exist_ok=True)
    base, ad = f"{work}/base", f"{work}/adapter"
    cg = None
    try:
        rng = np.random.default_rng(0)
        if not os.path.exists(f"{base}/config.json"):
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(ad, ignore_errors=True)
            t0 = time.monotonic()
            size = write_base(base, SHAPES[a.shape], rng)
            write_adapter(ad, SHAPES[a.shape], rng)
            print(f"base written: {size / 2**20:.0f} MiB float32 in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        size = json.load(open(f"{base}/model.safetensors.index.json"))["metadata"]["total_size"]
        cap = (a.cap_mib or int(size * 0.4 / 2**20)) * 2**20
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
        os.environ.update(env)

        def ftk_cmd(out):
            return [a.ftk, "merge-lora", "-q", "--model", base, "--adapter", ad, "--output", out,
                    "--dtype", "bfloat16", "--shard-size", "1GB"]

        def peft_cmd(out):
            return [sys.executable, "-c", PEFT_CHILD, base, ad, out, str(a.threads)]

        res = {"ftk": [], "peft": []}
        for i in range(a.repeats):
            for tool, mk in (("ftk", ftk_cmd), ("peft", peft_cmd)):
                out = f"{work}/{tool}-merged"
                shutil.rmtree(out, ignore_errors=True)
                ok, dt, anon, _, tail = run(mk(out))
                if not ok:
                    sys.exit(f"{tool} merge failed: {tail}")
                res[tool].append((dt, anon))
                print(f"  run {i + 1} {tool}: {dt:.1f} s, peak RssAnon {anon:.0f} MiB", file=sys.stderr)
        rss = {t: max_rss_mib(mk(f"{work}/{t}-rss")) for t, mk in (("ftk", ftk_cmd), ("peft", peft_cmd))}
        for t in rss:
            shutil.rmtree(f"{work}/{t}-rss", ignore_errors=True)

        capped = {}
        cg = Cgroup(cap)
        if cg.dir:
            for tool, mk in (("ftk", ftk_cmd), ("peft", peft_cmd)):
                out = f"{work}/{tool}-capped"
                shutil.rmtree(out, ignore_errors=True)
                cg.reset_peak()
                ok, dt, anon, cgpeak, tail = run(mk(out), cg)
                capped[tool] = (ok, dt, cgpeak, tail)
                print(f"  capped {tool}: {'ok' if ok else 'FAILED'} {dt:.1f} s, cgroup peak "
                      f"{cgpeak or 0:.0f} MiB {tail}", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"capped runs left out: {cg.why}", file=sys.stderr)

        keys, n, ulp, differ, logit = compare(f"{work}/ftk-merged", f"{work}/peft-merged")
        C, L, H, KV, F, V, tied, _ = shapes_of(SHAPES[a.shape])
        print(f"shape {a.shape}: {L} layers, hidden {C}, intermediate {F}, vocab {V}, "
              f"{n / 1e9:.2f}G parameters; base {size / 2**20:.0f} MiB float32; adapter r {R} on every linear; "
              f"merged to bfloat16 in 1 GB shards; {a.threads} threads; median of {a.repeats}\n")
        print("| tool | merge s | peak RssAnon MiB | peak RSS MiB (incl. mapped base) | "
              f"capped at {cap / 2**20:.0f} MiB ({cap / size:.0%} of the base) |")
        print("| --- | ---: | ---: | ---: | --- |")
        for t in ("ftk", "peft"):
            dt = median([r[0] for r in res[t]])
            anon = max(r[1] for r in res[t])
            if t in capped:
                ok, cdt, cgpeak, tail = capped[t]
                c = f"completed in {cdt:.1f} s, cgroup peak {cgpeak:.0f} MiB" if ok else f"failed after {cdt:.1f} s: {tail}"
            else:
                c = "not run"
            print(f"| {t} | {dt:.1f} | {anon:.0f} | {rss[t]:.0f} | {c} |")
        ft = median([r[0] for r in res["ftk"]]) / median([r[0] for r in res["peft"]])
        print(f"\nftk's time / peft's: {ft:.2f}x; ftk's peak anonymous memory / peft's: "
              f"{max(r[1] for r in res['ftk']) / max(r[1] for r in res['peft']):.3f}x")
        print(f"ftk's merged model vs peft's: {keys} tensors, {n / 1e9:.2f}G elements, max {ulp} bf16 ulp "
              f"({differ} elements differ); logits (transformers, 8 tokens) max rel {logit:.2e}")
    finally:
        if cg:
            cg.close()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
