#!/usr/bin/env python3
"""Parity fixtures for the preference losses (issue 7), made with trl, transformers and peft.

(1) tests/fixtures/pref/losses.safetensors: for each case <c>, the inputs the loss plugin sees
    and what TRL / LLaMA-Factory compute from them (float64 autograd on the F32 inputs):
      <c>.logps, <c>.ref_logps F32[B], <c>.n_tokens I32[B]    (pairwise: B/2 chosen, B/2 rejected)
      <c>.kto_tag I32[B], <c>.kl_logps, <c>.kl_ref_logps F32[Bk]  (kto)
      <c>.loss F32[1], <c>.dlogps F32[B] (d loss / d logps), <c>.m.<metric> F32[1]
    and losses.json: each case's plugin, options and accum.
    Which code is the oracle, per loss:
      dpo sigmoid / hinge / ipo  TRL 1.16 DPOTrainer._compute_loss itself, driven with a stand-in
                                 model whose per-token log-probs sum to the fixture's (and
                                 checked equal to LLaMA-Factory's formula below)
      dpo sigmoid+label_smoothing (cDPO), kto_pair: not in TRL >= 1.0; TRL 0.8.6 / 0.24
                                 DPOTrainer.dpo_loss (LLaMA-Factory's), transcribed below
      orpo                       LLaMA-Factory CustomDPOTrainer.odds_ratio_loss (transcribed),
                                 its odds-ratio term checked against TRL's ORPOTrainer.odds_ratio_loss
      simpo                      TRL's CPOTrainer.cpo_loss(loss_type="simpo") itself
      kto                        TRL 1.16 KTOTrainer._compute_loss itself (stand-in model)
      pref_ftx                   LLaMA-Factory's get_batch_loss_metrics (transcribed)
    Metrics as LLaMA-Factory computes them (rewards on the log-probs the loss used: averaged for
    ipo/orpo/simpo); for kto as TRL's KTOTrainer logs them.
(2) tests/fixtures/pref/steps.safetensors: one DPO step and one KTO step on the tiny Llama of
    tests/fixtures/hf_tiny/llama with its peft LoRA adapter: the batch, loss, metrics, grad norm
    and the LoRA parameters after one AdamW step. The reference is the base model (peft's
    disable_adapter(), LLaMA-Factory's reference without ref_model). TRL's loss code is run on
    the peft model's per-row log-probs (the stand-in model returns them), then
    clip_grad_norm_(1.0) and torch AdamW (lr 1e-2, wd 0.01, constant schedule): a manual step,
    not a full trl Trainer (its datasets/tokenizer plumbing does not fit a tokenizer-less tiny
    model). dpo_batch.jsonl / kto_batch.jsonl hold the same batches for `ftk dump --from-json`.
Run from the repo root:  .venv/bin/python tests/oracle/pref_losses.py
"""
import json
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import peft
import torch
import torch.nn.functional as F
import transformers
import trl
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

OUT = "tests/fixtures/pref"
TINY = "tests/fixtures/hf_tiny/llama"
SEED = 4321
D = torch.float64


class Acc:
    device = "cpu"

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, m):
        return m


def standin(lp_by_input):
    """A model whose forward returns given per-token log-probs (keyed by the input_ids tensor)."""
    def model(input_ids=None, **kw):
        lp = lp_by_input[id(input_ids)]
        B, W = lp.shape
        z = torch.zeros(B, W, dtype=lp.dtype)
        return SimpleNamespace(log_probs=lp, entropy=z, mean_logits=z, is_top1=torch.zeros(B, W, dtype=torch.bool))
    return model


def per_token(leaf_sums, width):
    """(B) sums -> (B, width) per-token log-probs whose rows sum to them (first column)."""
    return torch.cat([leaf_sums[:, None], torch.zeros(leaf_sums.shape[0], width - 1, dtype=leaf_sums.dtype)], 1)


def trl_dpo(logps_pt, ref, n, beta, loss_type, ls=0.0):
    """TRL 1.16 DPOTrainer._compute_loss on per-token log-probs logps_pt (B, W) (precomputed ref)."""
    from trl.trainer.dpo_trainer import DPOTrainer
    t = object.__new__(DPOTrainer)
    B, W = logps_pt.shape
    T = W + 1
    cm = torch.zeros(B, T, dtype=torch.long)
    for i in range(B):
        cm[i, T - int(n[i]):] = 1
    ids = torch.zeros(B, T, dtype=torch.long)
    P = B // 2
    inputs = {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.long), "completion_mask": cm,
              "ref_chosen_logps": ref[:P], "ref_rejected_logps": ref[P:]}
    t.__dict__.update(dict(accelerator=Acc(), model=SimpleNamespace(training=True), aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                           loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=ls,
                           use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None)))
    loss = t._compute_loss(standin({id(ids): logps_pt}), inputs, False)
    return loss, {k: v[-1] for k, v in t._metrics["train"].items()}


def trl_kto(logps_pt, ref, tags, kl_pt, kl_ref, beta, wd, wu):
    """TRL 1.16 KTOTrainer._compute_loss (precomputed ref and KL ref)."""
    from trl.trainer.kto_trainer import KTOTrainer
    t = object.__new__(KTOTrainer)
    B, W = logps_pt.shape
    ids = torch.zeros(B, W + 1, dtype=torch.long)
    kl_ids = torch.zeros(kl_pt.shape[0], kl_pt.shape[1] + 1, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.ones_like(ids),
             "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
             "KL_completion_mask": torch.ones_like(kl_ids), "label": torch.tensor([bool(x) for x in tags]),
             "ref_logps": ref, "ref_KL_logps": kl_ref}
    t.__dict__.update(dict(accelerator=Acc(), model=SimpleNamespace(training=True), aux_loss_enabled=False,
                           precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=beta,
                           desirable_weight=wd, undesirable_weight=wu, _metrics={"train": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1))
    loss = t._compute_loss(standin({id(ids): logps_pt, id(kl_ids): kl_pt.detach()}), batch, False)
    return loss, {k: v[-1] for k, v in t._metrics["train"].items()}


def lf_dpo(pc, pr, rc, rr, nc, nr, beta, loss_type, ls, ftx):
    """LLaMA-Factory CustomDPOTrainer.get_batch_loss_metrics with TRL 0.8.6/0.24 dpo_loss."""
    if loss_type == "ipo":   # concatenated_forward divides by valid_length for ipo (policy and ref)
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "kto_pair":   # TRL v0.8.6 dpo_trainer.py
        chosen_KL = (pc - rc).mean().clamp(min=0)
        rejected_KL = (pr - rr).mean().clamp(min=0)
        losses = torch.cat((1 - torch.sigmoid(beta * ((pc - rc) - rejected_KL)),
                            1 - torch.sigmoid(beta * (chosen_KL - (pr - rr)))), 0)
    cr, rj = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    chosen_avg = pc if loss_type == "ipo" else pc / nc
    loss = losses.mean()
    if ftx > 1e-6:   # losses += ftx * sft_loss (a broadcast; for kto_pair: mean(losses) + ftx mean(sft))
        loss = loss + ftx * (-chosen_avg).mean()
    return loss, pair_metrics(cr, rj, pc, pr)


def pair_metrics(cr, rj, pc, pr):
    return {"rewards/chosen": cr.mean().item(), "rewards/rejected": rj.mean().item(),
            "rewards/accuracies": (cr > rj).double().mean().item(), "rewards/margins": (cr - rj).mean().item(),
            "logps/chosen": pc.detach().mean().item(), "logps/rejected": pr.detach().mean().item()}


def lf_orpo(pc, pr, nc, nr, beta, ftx):
    """LLaMA-Factory CustomDPOTrainer.odds_ratio_loss on average log-probs, + pref_ftx."""
    pc, pr = pc / nc, pr / nr
    log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
    sft = -pc
    losses = sft + beta * -F.logsigmoid(log_odds)
    if ftx > 1e-6:
        losses = losses + ftx * sft
    # cross-check the odds-ratio term with TRL's ORPOTrainer (computes in float32)
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    o = object.__new__(ORPOTrainer)
    o.__dict__.update(beta=beta, accelerator=Acc())
    trl_ratio = ORPOTrainer.odds_ratio_loss(o, pc.detach(), pr.detach())[0]
    assert torch.allclose(trl_ratio.double(), beta * F.logsigmoid(log_odds.detach()), rtol=1e-5, atol=1e-7)
    m = pair_metrics(beta * pc.detach(), beta * pr.detach(), pc, pr)
    m["sft_loss"] = sft.detach().mean().item()
    m["odds_ratio_loss"] = ((losses - sft) / beta).detach().mean().item()
    return losses.mean(), m


def trl_simpo(pc, pr, nc, nr, beta, gamma, ftx):
    """TRL CPOTrainer.cpo_loss(loss_type='simpo') on average log-probs (LLaMA-Factory's simpo_loss), + pref_ftx."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    pc, pr = pc / nc, pr / nr
    c = object.__new__(CPOTrainer)
    c.__dict__.update(beta=beta, simpo_gamma=gamma, loss_type="simpo", label_smoothing=0.0, alpha=0.0,
                      accelerator=Acc())
    losses, _, _ = CPOTrainer.cpo_loss(c, pc, pr)
    lf = -F.logsigmoid(beta * ((pc - pr) - gamma / beta))
    assert torch.allclose(losses, lf, rtol=1e-12)
    if ftx > 1e-6:
        losses = losses + ftx * -pc
    return losses.mean(), pair_metrics(beta * pc.detach(), beta * pr.detach(), pc, pr)


def kto_ftx(loss, logps, n, tags, ftx):
    """LLaMA-Factory CustomKTOTrainer: losses += ftx * sft.nanmean() / len(chosen) * len(labels)."""
    ch = [i for i in range(len(tags)) if tags[i]]
    if ftx > 1e-6 and ch:
        sft = -(logps[ch] / n[ch])
        loss = loss + ftx * sft.mean() / len(ch) * len(tags)
    return loss


def f32(x):
    return torch.tensor(x, dtype=torch.float32)


def loss_cases(gen):
    cases = []

    def pair_inputs(P, lo=-60, hi=-5):
        logps = f32((torch.rand(2 * P, generator=gen) * (hi - lo) + lo).tolist())
        ref = f32((logps.double() + torch.randn(2 * P, generator=gen, dtype=D) * 3).tolist())
        n = torch.randint(3, 40, (2 * P,), generator=gen).int()
        return logps, ref, n

    def add_pair(name, plugin, opts, P=4, accum=1, ref_needed=True, avg_range=False):
        if avg_range:   # orpo: average log-probs must be < 0 with room: sums of -0.2..-3 per token
            n = torch.randint(3, 40, (2 * P,), generator=gen).int()
            per = torch.rand(2 * P, generator=gen, dtype=D) * 2.8 + 0.2
            logps = f32((-per * n.double()).tolist())
            ref = f32((logps.double() + torch.randn(2 * P, generator=gen, dtype=D)).tolist())
        else:
            logps, ref, n = pair_inputs(P)
        lp = logps.double().requires_grad_(True)
        r = ref.double()
        nd = n.double()
        P2 = P
        pc, pr, rc, rr, nc, nr = lp[:P2], lp[P2:], r[:P2], r[P2:], nd[:P2], nd[P2:]
        beta = float(opts.get("beta", 0.1))
        ftx = float(opts.get("pref_ftx", 0))
        if plugin == "dpo":
            lt = opts.get("loss_type", "sigmoid")
            ls = float(opts.get("label_smoothing", 0))
            loss, m = lf_dpo(pc, pr, rc, rr, nc, nr, beta, lt, ls, ftx)
            if lt in ("sigmoid", "hinge", "ipo") and ls == 0 and ftx == 0:
                lp2 = logps.double().requires_grad_(True)
                tl, tm = trl_dpo(per_token(lp2, 48), r, n, beta, lt)
                assert abs(tl.item() - loss.item()) <= 1e-12 * max(1, abs(loss.item())), (name, tl, loss)
                tl.backward()
                gl, = torch.autograd.grad(loss, lp, retain_graph=True)
                assert torch.allclose(lp2.grad, gl, rtol=1e-12, atol=1e-15), name
                if lt != "ipo":   # TRL >= 1.0 reports ipo rewards on sums; LLaMA-Factory on averages
                    for k, v in m.items():
                        assert abs(tm[k] - v) <= 1e-7 * max(1, abs(v)), (name, k, tm[k], v)   # accuracies: float32 in TRL
        elif plugin == "orpo":
            loss, m = lf_orpo(pc, pr, nc, nr, beta, ftx)
        elif plugin == "simpo":
            loss, m = trl_simpo(pc, pr, nc, nr, beta, float(opts.get("gamma", 0.5)), ftx)
        loss = loss / accum   # HF Trainer: loss / gradient_accumulation_steps
        g, = torch.autograd.grad(loss, lp)
        cases.append(dict(name=name, plugin=plugin, opts=opts, accum=accum, pairwise=1,
                          t={"logps": logps, "ref_logps": ref, "n_tokens": n}, loss=loss.item(), dlogps=g, m=m))

    add_pair("dpo_sigmoid", "dpo", {"beta": "0.1"})
    add_pair("dpo_sigmoid_b05", "dpo", {"beta": "0.5", "loss_type": "sigmoid"}, P=3)
    add_pair("dpo_cdpo", "dpo", {"beta": "0.1", "label_smoothing": "0.2"})
    add_pair("dpo_hinge", "dpo", {"beta": "0.2", "loss_type": "hinge"}, P=6)
    add_pair("dpo_ipo", "dpo", {"beta": "0.1", "loss_type": "ipo"})
    add_pair("dpo_kto_pair", "dpo", {"beta": "0.1", "loss_type": "kto_pair"})
    add_pair("dpo_ftx_accum2", "dpo", {"beta": "0.1", "pref_ftx": "0.5"}, accum=2)
    add_pair("orpo", "orpo", {"beta": "0.1"}, avg_range=True)
    add_pair("orpo_ftx", "orpo", {"beta": "0.25", "pref_ftx": "0.3"}, avg_range=True)
    add_pair("simpo", "simpo", {"beta": "2.0", "gamma": "0.5"}, avg_range=True)
    add_pair("simpo_ftx", "simpo", {"beta": "2.5", "gamma": "1.4", "pref_ftx": "0.1"}, P=5, avg_range=True)

    def add_kto(name, opts, tags, Bk=None, accum=1):
        B = len(tags)
        Bk = Bk or B
        logps = f32((torch.rand(B, generator=gen, dtype=D) * -50 - 5).tolist())
        ref = f32((logps.double() + torch.randn(B, generator=gen, dtype=D) * 3).tolist())
        n = torch.randint(3, 40, (B,), generator=gen).int()
        kl = f32((torch.rand(Bk, generator=gen, dtype=D) * -50 - 5).tolist())
        klr = f32((kl.double() - torch.rand(Bk, generator=gen, dtype=D) * 2 + float(opts.pop("_kl_shift", 0))).tolist())
        beta, wd, wu = float(opts.get("beta", 0.1)), float(opts.get("desirable_weight", 1)), float(opts.get("undesirable_weight", 1))
        lp = logps.double().requires_grad_(True)
        loss, m = trl_kto(per_token(lp, 4), ref.double(), tags, per_token(kl.double(), 4), klr.double(), beta, wd, wu)
        loss = kto_ftx(loss, lp, n.double(), tags, float(opts.get("pref_ftx", 0))) / accum
        g, = torch.autograd.grad(loss, lp)
        cases.append(dict(name=name, plugin="kto", opts=opts, accum=accum, pairwise=0,
                          t={"logps": logps, "ref_logps": ref, "n_tokens": n, "kto_tag": torch.tensor(tags).int(),
                             "kl_logps": kl, "kl_ref_logps": klr}, loss=loss.item(), dlogps=g, m=m))

    add_kto("kto", {"beta": "0.1"}, [1, 0, 1, 1, 0, 0])
    add_kto("kto_weights", {"beta": "0.3", "desirable_weight": "1.0", "undesirable_weight": "1.33"}, [1, 0, 0, 0, 1])
    add_kto("kto_kl_clamped", {"beta": "0.1", "_kl_shift": -5.0}, [1, 0, 1, 0])   # mean KL < 0 -> 0
    add_kto("kto_desirable_only", {"beta": "0.1"}, [1, 1, 1], accum=3)
    add_kto("kto_ftx", {"beta": "0.1", "pref_ftx": "0.2"}, [1, 0, 0, 1, 0], Bk=5)
    return cases


# ---- (2) training steps on the tiny model ----------------------------------------------------

def row_logps(model, ids, labels, pos, seg):
    """Per-token log p(labels[t+1]) at t, masked (B, T-1): HF's shifted label log-probs."""
    out = model(input_ids=ids, attention_mask=(seg != 0).long(), position_ids=pos)
    lp = out.logits[:, :-1].float().log_softmax(-1)
    lab = labels[:, 1:]
    mask = lab != -100
    tok = torch.gather(lp, 2, lab.clamp(min=0).unsqueeze(2)).squeeze(2)
    return tok * mask


def kl_batch(ids, lens, plen):
    """KL rows as ftk pack builds them (TRL's _get_kl_dataset): row i's prompt, then the completion
    of row i-1 (mod B); T2 rounded up to a multiple of 8."""
    B = len(lens)
    rows = []
    for i in range(B):
        j = (i - 1) % B
        rows.append((ids[i, :plen[i]].tolist(), ids[j, plen[j]:lens[j]].tolist()))
    T2 = (max(len(p) + len(c) for p, c in rows) + 7) // 8 * 8
    kid = torch.zeros(B, T2, dtype=torch.long)
    klab = torch.full((B, T2), -100, dtype=torch.long)
    kpos = torch.zeros(B, T2, dtype=torch.long)
    kseg = torch.zeros(B, T2, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        kid[i, :n] = torch.tensor(p + c)
        klab[i, len(p):n] = torch.tensor(c)
        kpos[i, :n] = torch.arange(n)
        kseg[i, :n] = 1
    return kid, klab, kpos, kseg


def make_rows(gen, lens, prompt_lens, V, T):
    B = len(lens)
    ids = torch.zeros(B, T, dtype=torch.long)
    lab = torch.full((B, T), -100, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.zeros(B, T, dtype=torch.long)
    for i, (n, p) in enumerate(zip(lens, prompt_lens)):
        ids[i, :n] = torch.randint(3, V, (n,), generator=gen)
        lab[i, p:n] = ids[i, p:n]
        pos[i, :n] = torch.arange(n)
        seg[i, :n] = 1
    return ids, lab, pos, seg


def step_case(kind, gen, exp, jl):
    torch.manual_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(base, os.path.join(TINY, "adapter"), is_trainable=True)
    pm.train()
    V = base.config.vocab_size
    T = 10
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    beta = 0.1
    if kind == "dpo":
        P = 2
        # same prompt for chosen and rejected of a pair, different completions
        ids, lab, pos, seg = make_rows(gen, [9, 7, 10, 6], [3, 4, 3, 4], V, T)
        ids[P:, :4] = ids[:P, :4]
        ids[2, :3] = ids[0, :3]
        ids[3, :4] = ids[1, :4]
        lab = torch.where(lab != -100, ids, lab)
        with torch.no_grad(), pm.disable_adapter():
            ref = row_logps(pm, ids, lab, pos, seg).sum(1).double()
        pt = row_logps(pm, ids, lab, pos, seg)
        loss, m = trl_dpo(pt.double(), ref, (lab[:, 1:] != -100).sum(1), beta, "sigmoid")
        tensors = {"input_ids": ids, "labels": lab, "position_ids": pos, "segment_ids": seg}
        meta = {"pairwise": "1"}
    else:
        tags = [1, 0, 1, 0]
        lens, plen = [8, 9, 6, 10], [3, 4, 2, 5]
        for _ in range(100):   # data whose KL estimate is positive, so the KL term is not clamped away
            ids, lab, pos, seg = make_rows(gen, lens, plen, V, T)
            kid, klab, kpos, kseg = kl_batch(ids, lens, plen)
            with torch.no_grad():
                pol = row_logps(pm, kid, klab, kpos, kseg).sum(1)
                with pm.disable_adapter():
                    rf = row_logps(pm, kid, klab, kpos, kseg).sum(1)
            if (pol - rf).mean() > 0.05:
                break
        with torch.no_grad(), pm.disable_adapter():
            ref = row_logps(pm, ids, lab, pos, seg).sum(1).double()
            kl_ref = row_logps(pm, kid, klab, kpos, kseg).sum(1).double()
        with torch.no_grad():
            kl_pt = row_logps(pm, kid, klab, kpos, kseg)
        pt = row_logps(pm, ids, lab, pos, seg)
        loss, m = trl_kto(pt.double(), ref, tags, kl_pt.double(), kl_ref, beta, 1.0, 1.0)
        tensors = {"input_ids": ids, "labels": lab, "position_ids": pos, "segment_ids": seg,
                   "kto_tag": torch.tensor(tags), "kl_input_ids": kid, "kl_labels": klab, "kl_position_ids": kpos,
                   "kl_segment_ids": kseg}
        meta = {"kto": "1"}
        exp[f"{kind}.kl_ref_logps"] = kl_ref.float()
    exp[f"{kind}.ref_logps"] = ref.float()
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.step()
    exp[f"{kind}.loss"] = loss.detach().float().reshape(1)
    exp[f"{kind}.grad_norm"] = gn.detach().float().reshape(1)
    for k, v in m.items():
        if k.startswith(("rewards/", "logps/")) or k == "kl":
            exp[f"{kind}.m.{k}"] = torch.tensor([v], dtype=torch.float32)
    for n, p in named:
        exp[f"{kind}.step1.{n.replace('.default', '')}"] = p.detach().clone()
    for k, v in tensors.items():
        exp[f"{kind}.{k}"] = v.int()
    jl.write(json.dumps({"kind": "batch", "meta": meta,
                         "tensors": {k: v.tolist() for k, v in tensors.items()}}) + "\n")
    print(f"{kind} step: loss {loss.item():.8f} grad_norm {gn.item():.6f} {m}")


def main():
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    cases = loss_cases(gen)
    tens, index = {}, []
    for c in cases:
        for k, v in c["t"].items():
            tens[f"{c['name']}.{k}"] = v
        tens[f"{c['name']}.loss"] = torch.tensor([c["loss"]], dtype=torch.float32)
        tens[f"{c['name']}.dlogps"] = c["dlogps"].float()
        for k, v in c["m"].items():
            tens[f"{c['name']}.m.{k}"] = torch.tensor([v], dtype=torch.float32)
        index.append({"name": c["name"], "plugin": c["plugin"], "opts": c["opts"], "accum": c["accum"],
                      "pairwise": c["pairwise"], "metrics": sorted(c["m"])})
    vers = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "seed": str(SEED), "script": "tests/oracle/pref_losses.py"}
    save_file({k: v.contiguous() for k, v in tens.items()}, os.path.join(OUT, "losses.safetensors"), metadata=vers)
    with open(os.path.join(OUT, "losses.json"), "w") as f:
        json.dump({"versions": vers, "cases": index}, f, indent=1)
        f.write("\n")
    exp = {}
    for kind in ("dpo", "kto"):
        with open(os.path.join(OUT, f"{kind}_batch.jsonl"), "w") as jl:
            jl.write(json.dumps({"kind": "stream", "meta": {"producer": "tests/oracle/pref_losses.py", "batches": "1"}}) + "\n")
            step_case(kind, gen, exp, jl)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "steps.safetensors"), metadata=vers)
    print(f"{len(cases)} loss cases; versions {vers}")


if __name__ == "__main__":
    main()
