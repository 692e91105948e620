#!/usr/bin/env python3
"""adapter-transformers itself (the `adapters` package) on the tiny llama with the adapters of
tests/fixtures/peft_methods/adapters loaded by name: its logits against the fixtures' (torch
formulas, which ftk matches within 1.2e-6; tests/unit/test_plugin_adapters.c). With a directory
argument (FTK_ADAPTERS_OUT of that test) the adapters ftk saved after training load too.

adapters 1.3 pins transformers 4.x, so it lives in its own venv (git-ignored):
  python3 -m venv .venv-adapters && .venv-adapters/bin/pip install adapters
  (torch: pip install torch there, or a .pth line naming .venv's site-packages)
  .venv-adapters/bin/python tests/oracle/check_adapters.py [DIR]
Variants ftk has and adapters has not (parallel_input=normed, PALs) are left out.
"""
import json
import os
import sys

# this directory's adapters.py (the torch oracle) would shadow the package
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
import adapters  # noqa: E402
import torch  # noqa: E402
from adapters import DoubleSeqBnConfig, Fuse, ParBnConfig, SeqBnConfig
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

SRC = "tests/fixtures/hf_tiny/llama"
FIX = "tests/fixtures/peft_methods/adapters"


def base():
    d = json.load(open(os.path.join(SRC, "config.json")))
    rp = d.pop("rope_parameters", None)  # transformers 5's key; 4.x reads rope_theta + rope_scaling
    if rp:
        d["rope_theta"] = rp.pop("rope_theta")
        d["rope_scaling"] = rp
    m = LlamaForCausalLM.from_pretrained(SRC, config=LlamaConfig(**d), dtype=torch.float32, attn_implementation="eager")
    adapters.init(m)
    return m


def bn_config(c):
    """ftk's bottleneck options as adapters' BnConfig."""
    cls = {"houlsby": DoubleSeqBnConfig, "pfeiffer": SeqBnConfig, "parallel": ParBnConfig}[c["config"]]
    kw = {"non_linearity": c["non_linearity"], "scaling": c["scaling"]}
    C = 16
    kw["reduction_factor"] = C / c["bottleneck_size"] if c.get("bottleneck_size") else c["reduction_factor"]
    if c.get("adapter_drop_layers"):
        kw["leave_out"] = list(range(int(c["adapter_drop_layers"])))
    if isinstance(kw["scaling"], (int, float)):
        kw["scaling"] = float(kw["scaling"])
    return cls(**kw)


def load(m, sd):
    own = m.state_dict()
    missing = [k for k in sd if k not in own]
    assert not missing, missing[:3]
    m.load_state_dict(sd, strict=False)


def logits(m, e):
    m.eval()
    with torch.no_grad():
        return m(input_ids=e["input_ids"].long(), position_ids=e["position_ids"].long()).logits


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main():
    e = load_file(os.path.join(FIX, "expected.safetensors"))
    plain = load_file(os.path.join(SRC, "expected.safetensors"))["logits"]  # the base model's
    worst = 0
    for tag in ("houlsby", "pfeiffer", "parallel", "pfeiffer_drop"):
        c = json.load(open(os.path.join(FIX, tag, "adapter_config.json")))
        name = c.get("adapter_name", "default")
        m = base()
        m.add_adapter(name, config=bn_config(c))
        load(m, load_file(os.path.join(FIX, tag, "adapter_model.safetensors")))
        m.set_active_adapters(name)
        lg = logits(m, e)
        r, moved = rel(lg, e[tag + ".logits"]), rel(lg, plain)
        print(f"{tag}: adapters' logits vs the fixture's: rel err {r:.2e} (the adapter moves them by {moved:.2e})")
        worst = max(worst, r if moved > 1e-3 else 1.0)
    for tag, preset in (("fusion", "dynamic"), ("fusion_static", "static")):
        m = base()
        names = [f"{tag}_a", f"{tag}_b"]
        for nm in names:
            c = json.load(open(os.path.join(FIX, nm, "adapter_config.json")))
            m.add_adapter(nm, config=bn_config(c))
            sd = load_file(os.path.join(FIX, nm, "adapter_model.safetensors"))
            load(m, {k.replace(".adapters.default.", f".adapters.{nm}."): v for k, v in sd.items()})
        m.add_adapter_fusion(Fuse(*names), preset)
        pre = tag + ".init."
        load(m, {k[len(pre):]: v for k, v in e.items() if k.startswith(pre)})
        m.set_active_adapters(Fuse(*names))
        lg = logits(m, e)
        r, moved = rel(lg, e[tag + ".logits"]), rel(lg, plain)
        print(f"{tag}: adapters' AdapterFusion ({preset}) logits vs the fixture's: rel err {r:.2e} (moved {moved:.2e})")
        worst = max(worst, r if moved > 1e-3 else 1.0)
    if len(sys.argv) > 1:  # what ftk saved after training (test_plugin_adapters with FTK_ADAPTERS_OUT)
        for tag in ("houlsby", "pfeiffer", "parallel"):
            d = os.path.join(sys.argv[1], tag)
            c = json.load(open(os.path.join(d, "adapter_config.json")))
            m = base()
            m.add_adapter("default", config=bn_config(c))
            load(m, load_file(os.path.join(d, "adapter_model.safetensors")))
            m.set_active_adapters("default")
            lg = logits(m, e)
            print(f"{tag}: adapters loads ftk's trained adapter: logits finite {bool(torch.isfinite(lg).all())}")
    print(f"worst {worst:.2e}")
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
