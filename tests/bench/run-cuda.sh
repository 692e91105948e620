#!/bin/sh
# tests/bench/run-cuda.sh BUILD: GPU benchmarks of issue 10 (`make bench-cuda`), ftk against
# PyTorch + transformers + peft (SDPA attention) side by side in one run, on the same GPU.
#
# LoRA SFT, rank 16 on all linear layers (alpha 32, no dropout), BF16 weights, batch 1 x 2048
# tokens, every token labelled, AdamW lr 1e-4, grad-norm clipping 1.0, random weights, for a
# Llama-3-8B shape and a Llama-3.2-1B shape (SHAPES=8b,1b). Per shape and side:
#   tokens/s   median over the steps after WARMUP of (tokens in the step / step time)
#   MFU        tokens/s * FLOPs per token / the GPU's dense BF16 peak, with (model FLOPs, not
#              hardware FLOPs: recomputation is not counted)
#                FLOPs/token = 4 P + 6 P_lora + 6 L H D T
#              P: parameters of every matmul of the frozen model (all linear layers and lm_head,
#              not the embedding lookup): 2 P forward, 2 P for the input gradients, no weight
#              gradients for frozen weights; P_lora: LoRA parameters (forward, input and weight
#              gradients: 6); attention with a causal mask, per layer and token: QK^T and PV over
#              T/2 keys on average = 2 H D T forward, 4 H D T backward.
#              Peaks: H100 SXM / H200 989 TFLOP/s, H100 PCIe 756 (NVIDIA datasheets, dense BF16;
#              override with PEAK_TFLOPS=...).
#   peak MiB   the process's largest GPU memory in use (nvidia-smi, polled every 100 ms; the same
#              method for both sides; PyTorch's own max_memory_reserved is printed beside it)
#   longest T  the longest sequence whose training step fits at batch 1 (doubling from 2048)
# ref-logps throughput (tokens/s, inference only) and generate decode tokens/s come with the ftk
# CUDA tools.
#
# ftk's side runs `ftk train-step --device cuda`. Until the tools accept it (issue 10: the
# backend exists, the model does not use it yet) its columns read "n/a" with the tool's message.
# Without a GPU the script says so and exits 0; without torch/transformers/peft it exits 1.
# Environment: SHAPES (8b,1b), STEPS (10), WARMUP (2), T (2048), LONGEST (1: search the longest
# T; 0: skip), PYTHON (.venv/bin/python if present, else python3), PEAK_TFLOPS.
set -u
BUILD=${1:-build}
FTK=$BUILD/bin/ftk

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench-cuda: skipped: no GPU (nvidia-smi finds no device); nothing measured"
    exit 0
fi
PY=${PYTHON:-}
[ -z "$PY" ] && { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
if ! "$PY" -c 'import torch, transformers, peft; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "bench-cuda: $PY cannot import torch, transformers and peft with CUDA; install them (pip install torch transformers peft)" >&2
    exit 1
fi
[ -x "$FTK" ] || { echo "bench-cuda: $FTK not built (make CUDA=1)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ftk-bench-cuda.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
cat > "$TMP/bench.py" <<'PYEOF'
import json, os, subprocess, sys, tempfile, threading, time

FTK, TMP = sys.argv[1], sys.argv[2]
STEPS, WARMUP, T = int(os.environ.get("STEPS", 10)), int(os.environ.get("WARMUP", 2)), int(os.environ.get("T", 2048))
LONGEST = os.environ.get("LONGEST", "1") == "1"
SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab, tied) as the HF configs
    "8b": (4096, 32, 32, 8, 14336, 128256, False),   # meta-llama/Meta-Llama-3-8B
    "1b": (2048, 16, 32, 8, 8192, 128256, True),     # meta-llama/Llama-3.2-1B
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gpu_info():
    import torch
    p = torch.cuda.get_device_properties(0)
    name = p.name
    peak = float(os.environ.get("PEAK_TFLOPS", 0)) or (756.0 if "PCIe" in name else 989.4)
    return name, peak


def flops_per_token(shape, t):
    C, L, H, KV, F, V, tied = shape
    D = C // H
    P = L * (C * H * D + 2 * C * KV * D + H * D * C + 3 * C * F) + V * C   # matmuls + lm_head
    r = 16
    P_lora = L * r * ((C + H * D) + 2 * (C + KV * D) + (H * D + C) + 2 * (C + F) + (F + C))
    return 4 * P + 6 * P_lora + 6 * L * H * D * t, P, P_lora


def make_model(d, shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    C, L, H, KV, F, V, tied = shape
    cfg = LlamaConfig(hidden_size=C, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                      intermediate_size=F, vocab_size=V, max_position_embeddings=131072, rope_theta=500000.0,
                      tie_word_embeddings=tied, torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    m.save_pretrained(d, safe_serialization=True)
    del m
    torch.set_default_dtype(torch.float32)
    torch.cuda.empty_cache()


class GpuPeak:
    """Largest GPU memory used by a process (nvidia-smi every 100 ms)."""
    def __init__(self, pid):
        self.pid, self.peak, self.stop = str(pid), 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                f = [x.strip() for x in line.split(",")]
                if len(f) == 2 and f[0] == self.pid and f[1].isdigit():
                    self.peak = max(self.peak, int(f[1]))
            time.sleep(0.1)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def run_child(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mon = GpuPeak(p.pid)
    out, err = p.communicate()
    return p.returncode, out.decode(), err.decode(), mon.done()


TORCH_CHILD = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
d, t, steps, recompute = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
if recompute:
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.enable_input_require_grads()
m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=%s, task_type="CAUSAL_LM"))
m.train()
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
g = torch.Generator().manual_seed(0)
times = []
for s in range(steps):
    ids = torch.randint(3, m.config.vocab_size, (1, t), generator=g).cuda()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "reserved_mib": torch.cuda.max_memory_reserved() / 2**20}))
''' % repr(LORA_TARGETS)


def torch_run(d, t, steps, recompute=False):
    rc, out, err, peak = run_child([sys.executable, "-c", TORCH_CHILD, d, str(t), str(steps), "1" if recompute else "0"])
    if rc != 0:
        return None, peak, err.strip().splitlines()[-1:] or ["failed"]
    r = json.loads(out.strip().splitlines()[-1])
    return r, peak, None


def ftk_batches(path, vocab, t, steps):
    import random
    rnd = random.Random(0)
    lines = [json.dumps({"kind": "stream", "meta": {"producer": "bench-cuda", "batches": str(steps)}})]
    for _ in range(steps):
        ids = [[rnd.randrange(3, vocab) for _ in range(t)]]
        lines.append(json.dumps({"kind": "batch", "tensors": {
            "input_ids": ids, "labels": ids, "position_ids": [list(range(t))], "segment_ids": [[1] * t]}}))
    subprocess.run([FTK, "dump", "--from-json"], input="\n".join(lines).encode(), stdout=open(path, "wb"), check=True)


def ftk_run(d, vocab, t, steps, recompute=False):
    fts = os.path.join(TMP, f"b{t}.fts")
    ftk_batches(fts, vocab, t, steps)
    cmd = [FTK, "train-step", "--device", "cuda", "--model", d, "--lora-rank", "16", "--lora-alpha", "32",
           "--lr", "1e-4", "--lr-scheduler", "constant", "--max-grad-norm", "1.0"] + (["--recompute"] if recompute else []) + [fts]
    rc, out, err, peak = run_child(cmd)
    if rc != 0:
        return None, peak, err.strip().splitlines()[-1:] or ["failed"]
    el = [json.loads(l)["elapsed_s"] for l in out.splitlines() if l.strip().startswith("{")]
    return {"times": [el[0]] + [el[i] - el[i - 1] for i in range(1, len(el))]}, peak, None


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def longest(fn):
    best, t = None, 2048
    while t <= 262144:
        r, _, _ = fn(t)
        if r is None:
            break
        best, t = t, t * 2
    return best


def main():
    name, peak_tf = gpu_info()
    print(f"# bench-cuda on {name} (dense BF16 peak {peak_tf:.0f} TFLOP/s), batch 1 x {T}, {STEPS} steps, "
          f"median after {WARMUP}\n")
    print("| shape | side | tokens/s | MFU | peak MiB (nvidia-smi) | torch reserved MiB | longest T (batch 1) | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for sname in os.environ.get("SHAPES", "8b,1b").split(","):
        shape = SHAPES[sname]
        fpt, P, Pl = flops_per_token(shape, T)
        d = os.path.join(TMP, "model-" + sname)
        make_model(d, shape)
        for side in ("ftk", "transformers+peft"):
            if side == "ftk":
                r, peak, err = ftk_run(d, shape[5], T, STEPS)
                lt = (lambda t: ftk_run(d, shape[5], t, 1))
            else:
                r, peak, err = torch_run(d, T, STEPS)
                lt = (lambda t: torch_run(d, t, 1))
            if r is None:
                print(f"| {sname} | {side} | n/a | n/a | n/a | n/a | n/a | {' '.join(err)[:200]} |", flush=True)
                continue
            tps = T / median(r["times"][WARMUP:] or r["times"])
            mfu = tps * fpt / (peak_tf * 1e12)
            res = f"{r['reserved_mib']:.0f}" if "reserved_mib" in r else "-"
            lg = longest(lt) if LONGEST else None
            print(f"| {sname} | {side} | {tps:.0f} | {100 * mfu:.1f}% | {peak} | {res} | {lg or '-'} | "
                  f"P={P / 1e9:.2f}B, P_lora={Pl / 1e6:.1f}M |", flush=True)
        subprocess.run(["rm", "-rf", d])


main()
PYEOF
"$PY" "$TMP/bench.py" "$FTK" "$TMP"
