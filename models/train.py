"""`ffnbench train`: one CausalLM trained on real prose, deterministic for a seed and machine.

Every design trains with the same data order, seeds, optimiser (AdamW) and schedule, so a pair
differs only in its FFN sublayers. The checkpoint directory holds model.safetensors and
manifest.json (corpus hash, configs, steps, loss curve, held-out bits per byte).
"""

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ffnbench import files
from ffnbench.errors import UsageError
from ffnbench.models import corpus
from ffnbench.models.lm import CausalLM, LMConfig
from ffnbench.models.pair import load_lm
from ffnbench.versions import stack_versions

INITS = ("gpt2", "ffn-synthetic")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
TRAINING_CORPORA = ("prose", "library")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200  # about 15 minutes on 2 cores at the default sizes (issue 11: 0.7 s a step)
    batch: int = 32  # sequences of context + 1 bytes
    lr: float = 3e-3  # peak; linear warm-up, then cosine decay to a tenth
    warmup: int = 50
    weight_decay: float = 0.1  # on matrices and embeddings; gains and biases take none (decay_vectors)
    seed: int = 0  # data order
    eval_batch: int = 64  # held-out windows scored at once
    # gpt2: every part N(0, 0.02), residual output projections / sqrt(2 n_layers), biases 0, gains 1,
    # the same rule for both designs. ffn-synthetic: the FFN sublayers keep the synthetic-sublayer
    # initialisation (1/sqrt(fan_in), biases 0.1, gains 1 ± 0.2), what checkpoints before it used.
    init: str = "gpt2"
    decay_vectors: bool = False  # weight decay on gains and biases too (checkpoints before it: True)
    validation: bool = True  # hold VALIDATION of the training bytes out to score (checkpoints before it: False)
    # Fine-tuning: start from this checkpoint's weights (same design and config) instead of an init.
    init_from: str | None = None
    # How model.safetensors stores the weights. float16 halves a checkpoint (the committed ones share a
    # 64 MB budget); the model then is the upcast fp16 weights, which every figure is measured on.
    # With init_from and steps = 0 nothing trains: the start is stored again in this dtype.
    store_dtype: str = "float32"
    # What to train on: "prose" (pydoc_data.topics, what the committed models learned) or "library"
    # (18 MB split by document, models/library.py; `make corpus` fetches it).
    corpus: str = "prose"

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "eval_batch"):
            value, restoring = getattr(self, name), name == "steps" and self.init_from is not None
            if not isinstance(value, int) or value < (0 if restoring else 1):
                raise UsageError(f"{name}: must be a positive integer, got {value!r}"
                                 + (" (0 steps only with --init-from: store a checkpoint again)"
                                    if name == "steps" else ""))
        if not self.lr > 0 or self.warmup < 0 or self.weight_decay < 0:
            raise UsageError("lr must be positive, warmup and weight_decay >= 0")
        if self.init not in INITS:
            raise UsageError(f"init: unknown '{self.init}'; choose one of {', '.join(INITS)}")
        if self.corpus not in TRAINING_CORPORA:
            raise UsageError(f"corpus: unknown '{self.corpus}'; choose one of {', '.join(TRAINING_CORPORA)}")
        if self.store_dtype not in STORE_DTYPES:
            raise UsageError(f"store_dtype: unknown '{self.store_dtype}'; choose one of {', '.join(STORE_DTYPES)}")


def schedule(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine from 1 to 0.1 at the last step."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def batches(data: np.ndarray, context: int, cfg: TrainConfig):
    """Random windows of context + 1 bytes, (batch, context + 1) int64, a pure function of the seed."""
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.from_numpy(data.astype(np.int64))
    offsets = torch.arange(context + 1)
    for _ in range(cfg.steps):
        starts = torch.randint(0, len(tokens) - context - 1, (cfg.batch,), generator=generator)
        yield tokens[starts[:, None] + offsets]


@torch.no_grad()
def bits_per_byte(model: CausalLM, data: np.ndarray, batch: int) -> float:
    """Mean next-byte cross-entropy in bits over non-overlapping windows covering `data`."""
    context = model.cfg.context
    n = (len(data) - 1) // context
    if n == 0:
        raise UsageError(f"text of {len(data)} bytes is shorter than one context of {context + 1} bytes; "
                         "give more text or a shorter context")
    tokens = torch.from_numpy(data[: n * context + 1].astype(np.int64))
    windows = tokens.unfold(0, context + 1, context)  # (n, context + 1): window i starts at byte i * context
    model.eval()
    with torch.no_grad():  # scoring only: no autograd graph per batch
        nats = sum(model.loss(windows[i:i + batch]).item() * len(windows[i:i + batch]) for i in range(0, n, batch))
    return nats / n / math.log(2)


def gpt2_init_(model: CausalLM, seed: int) -> None:
    """GPT-2's initialisation for every part, FFN sublayers included: weights N(0, 0.02), each
    residual branch's output projection (attention's and the FFN's) N(0, 0.02 / sqrt(2 n_layers)),
    biases 0, norm gains 1 and shifts 0. The FFN sublayers draw from a generator of their own, so
    the shared parts get the same draws in every design whatever its FFN widths."""
    shared, ffn = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    out_std = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                # The residual branches end in attn.proj and the FFN's last Linear (fc2 or down).
                last = name.endswith((".attn.proj", ".mlp.fc2", ".mlp.down"))
                draw = torch.randn(module.weight.shape, generator=ffn if ".ffn." in name else shared)
                module.weight.copy_(draw * (out_std if last else 0.02))
            if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.nn.Parameter):
                module.bias.zero_()
            if name.endswith("norm"):
                module.weight.fill_(1.0)


def _load_start(path: str, lm_cfg: LMConfig, model: CausalLM) -> dict:
    """Load a checkpoint's weights into `model` (its config must be lm_cfg's); what the manifest records."""
    start, manifest = load_lm(Path(path), lm_cfg.design)
    if start.cfg != lm_cfg:
        raise UsageError(f"--init-from: {path} holds {start.cfg}, not the model asked for ({lm_cfg}); give --seed "
                         "the checkpoint's")
    model.load_state_dict(start.state_dict())
    return {"path": str(path), "sha256": manifest["sha256"]}


def parameter_groups(model: CausalLM, cfg: TrainConfig) -> list[dict]:
    """Weight decay on matrices and embeddings; on gains and biases (1-d) only with decay_vectors."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": matrices, "weight_decay": cfg.weight_decay},
            {"params": vectors, "weight_decay": cfg.weight_decay if cfg.decay_vectors else 0.0}]


def train(lm_cfg: LMConfig, cfg: TrainConfig, out: Path | None = None, progress: bool | None = None,
          drift=None) -> dict:
    """Train one CausalLM on cfg.corpus; write it to `out` (nothing half-written) and return its
    manifest (the losses of every step among it). `drift(step, model, batch) -> (Drift | None,
    inject)` puts a drift on the states of each step's requests (bench/traffic/drift_training.py);
    its describe() goes into the manifest."""
    text = corpus.load(cfg.corpus)
    train_bytes, validation, held_out = text.split_validation()
    if not cfg.validation:
        train_bytes, validation = text.split()[0], None
    for part, data in (("held-out", held_out), ("validation", validation)):
        if data is not None and len(data) <= lm_cfg.context + 1:
            raise UsageError(f"corpus {text.name}: its {part} part ({len(data)} bytes) is shorter than one "
                             f"context ({lm_cfg.context + 1} bytes); use a shorter context")
    if out is not None and Path(out).exists():
        raise UsageError(f"--out: {out} already exists; choose a new directory")
    if cfg.steps == 0:
        return restore(lm_cfg.design, cfg, held_out, validation, out)
    torch.manual_seed(lm_cfg.seed)  # nothing should draw from it; pinned anyway for determinism
    model = CausalLM(lm_cfg)
    start = None
    if cfg.init_from is not None:
        start = _load_start(cfg.init_from, lm_cfg, model)
    elif cfg.init == "gpt2":
        gpt2_init_(model, lm_cfg.seed)
    optimiser = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: schedule(step, cfg))
    losses, started = [], time.perf_counter()
    model.train()
    for step, tokens in enumerate(tqdm(batches(train_bytes, lm_cfg.context, cfg), total=cfg.steps, unit="step",
                                       file=sys.stderr, disable=None if progress is None else not progress,
                                       desc=f"train {lm_cfg.design}")):
        loss = model.loss(tokens, *drift(step, model, len(tokens))) if drift else model.loss(tokens)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        losses.append(round(loss.item(), 5))
    cast_(model, cfg.store_dtype)
    manifest = {
        "kind": "ffnbench.lm", "config": lm_cfg.to_dict(), "train": dataclasses.asdict(cfg),
        "corpus": text.describe(), "steps": cfg.steps, "losses": losses,
        "held_out_bits_per_byte": bits_per_byte(model, held_out, cfg.eval_batch),
        "validation_bits_per_byte": bits_per_byte(model, validation, cfg.eval_batch) if validation is not None
        else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - started, 1), "versions": stack_versions(),
        "init_from": start, "drift": drift.describe() if drift else None,
    }
    if out is not None:
        save(model, manifest, cfg.store_dtype, Path(out))
    return manifest


def restore(design: str, cfg: TrainConfig, held_out: np.ndarray, validation: np.ndarray | None,
            out: Path | None) -> dict:
    """The checkpoint cfg.init_from stored again in cfg.store_dtype, nothing trained: its manifest's
    record of how it was trained kept, its bits per byte re-measured on the cast weights, and the
    file it came from (`stored_from`) hashed, so the fp32 original can be found (git history)."""
    model, manifest = load_lm(Path(cfg.init_from), design)
    cast_(model, cfg.store_dtype)
    manifest = {**manifest, "train": {**manifest["train"], "store_dtype": cfg.store_dtype},
                "stored_from": {"path": str(cfg.init_from), "sha256": manifest["sha256"]},
                "held_out_bits_per_byte": bits_per_byte(model, held_out, cfg.eval_batch),
                "validation_bits_per_byte": bits_per_byte(model, validation, cfg.eval_batch)
                if validation is not None and manifest.get("validation_bits_per_byte") is not None else None}
    if out is not None:
        save(model, manifest, cfg.store_dtype, Path(out))
    return manifest


@torch.no_grad()
def cast_(model: CausalLM, store_dtype: str) -> None:
    """Round the weights to store_dtype in place, so that what is stored is what is measured."""
    for name, p in model.named_parameters():
        stored = p.to(STORE_DTYPES[store_dtype])
        if not torch.isfinite(stored).all():
            raise UsageError(f"--store-dtype {store_dtype}: {name} holds values past its range "
                             f"(max |w| {p.abs().max().item():.3g}); store float32")
        p.copy_(stored)


def save(model: CausalLM, manifest: dict, store_dtype: str, out: Path) -> None:
    """model.safetensors in store_dtype and manifest.json (with the weights' sha256), all or nothing."""
    with files.staged_dir(out) as stage:
        save_file({k: v.to(STORE_DTYPES[store_dtype]).contiguous() for k, v in model.state_dict().items()},
                  str(stage / "model.safetensors"))
        manifest["sha256"] = files.sha256_file(stage / "model.safetensors")
        files.write_json(stage / "manifest.json", manifest)
