"""A user's whole causal language model for whole-model cells: a Hugging Face checkpoint directory or
a GGUF file, loaded through transformers (the `[hf]` extra; GGUF through `gguf` as well) from local
files only, rebuilt as a RealLM and checked against transformers' own forward, with its tokenizer.

A GGUF's weights are dequantized to fp32 by gguf (transformers' loader, which also undoes llama.cpp's
rotary permutation of the query and key weights): the fp32 model *is* the dequantized file.
Everything is checked before a run writes anything: the file by hash, the architecture, the memory a
model of that size needs, the tokenizer, the text's length in tokens.
"""

import contextlib
import functools
import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnbench import files
from ffnbench.bench.machine.fit import available_bytes
from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models.real_lm import FAMILIES, RealLM, from_hf

# A whole model's fp32 weights are held about eight times at the peak: transformers' model, the
# RealLM, and the ONNX export (torch.export's graph, the proto, ORT's parity session). Measured:
# SmolLM2's 135M parameters (0.54 GB in fp32) peaked at 4.3 GB exporting.
PEAK_COPIES = 8
PARITY_TOL = 1e-4  # RealLM vs transformers, max abs logit error relative to the largest logit


@dataclass
class WholeModel:
    model: RealLM
    tokenizer: object
    source: dict  # what a run records: kind, file name, sha256, family, parameters

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, bytes each token adds): the UTF-8 bytes from the end of the previous token to
        the end of this one, so that the bytes of any run of tokens add up to the text they cover."""
        got = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(got["input_ids"], np.int64)
        if not len(ids):
            return ids, np.zeros(0, np.int64)
        char_bytes = _utf8_lengths(text)
        byte_end = np.concatenate([[0], np.cumsum(char_bytes)])  # byte offset of each character boundary
        ends = np.maximum.accumulate(byte_end[np.asarray([end for _, end in got["offset_mapping"]], np.int64)])
        return ids, np.diff(np.concatenate([[0], ends]))


def _utf8_lengths(text: str) -> np.ndarray:
    points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("a whole Hugging Face or GGUF model is loaded by transformers; pip install 'ffnbench[hf]'") \
            from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def check_fits(parameters: int, where: str) -> None:
    """Refuse a model whose fp32 copies would not fit in the memory available now."""
    need, free = PEAK_COPIES * 4 * parameters, available_bytes()
    if free is not None and need > free:
        raise UsageError(f"{where}: {parameters / 1e6:.3g}M parameters need about {need / 1e9:.1f} GB to load and "
                         f"export in fp32, and {free / 1e9:.1f} GB is available; free memory or take a smaller model")


@functools.cache
def gguf_header(path: Path, where: str) -> tuple[str, int, tuple[str, ...]]:
    """(architecture, parameter count, tensor types) from a GGUF file's header, without reading its
    weights; read once a process (a run plans by it, checks and loads by it)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError(f"{where}: reading GGUF needs the gguf package; pip install 'ffnbench[hf]'") from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise UsageError(f"{where}: {path.name} is not a readable GGUF file ({_first_line(e)}); give a .gguf "
                         "model file") from None
    return (arch, int(sum(int(t.n_elements) for t in reader.tensors)),
            tuple(sorted({t.tensor_type.name for t in reader.tensors})))


def hf_parameters(weights: list[Path], where: str) -> int:
    from safetensors import SafetensorError, safe_open

    total = 0
    for file in weights:
        if file.suffix != ".safetensors":  # pytorch_model*.bin: memory-mapped, counted, not read
            try:
                total += sum(t.numel() for t in torch.load(file, mmap=True, weights_only=True).values())
            except (OSError, RuntimeError, pickle.UnpicklingError) as e:
                raise UsageError(f"{where}: {file.name} does not load ({_first_line(e)}); re-save the model with "
                                 "save_pretrained") from None
            continue
        try:
            with safe_open(str(file), "pt") as f:
                total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
        except (OSError, SafetensorError) as e:
            raise UsageError(f"{where}: {file.name} does not read as safetensors ({_first_line(e)}); re-save the "
                             "model with save_pretrained") from None
    return total


# GGUF architectures (llama.cpp's names) -> the family their FFNs are read as; llama.cpp files
# Mistral models as "llama".
GGUF_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}


@functools.cache
def family_of(path: Path, where: str) -> str:
    """The model's family from its config.json or GGUF header alone (what a run plans by)."""
    path = Path(path)
    if path.is_dir():
        try:
            family = json.loads((path / "config.json").read_text())["model_type"]
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"{where}: {path} has no readable config.json with a model_type ({_first_line(e)}); "
                             "save the model with save_pretrained") from None
    elif path.suffix == ".gguf" and path.is_file():
        arch, _, _ = gguf_header(path, where)
        family = GGUF_FAMILIES.get(arch, arch)
    else:
        raise UsageError(f"{where}: no checkpoint directory or .gguf file at {path}; give one (relative to the "
                         "config's folder)")
    _check_family(family, where)
    return family


def design_of(path: Path, where: str) -> str:
    """The FFN design the model's family is (A for GPT-2, B for the Llama family)."""
    return FAMILIES[family_of(path, where)]


def load(path: Path, where: str, context: int, sha256: str | None = None) -> WholeModel:
    """The model at `path` (a checkpoint directory or a .gguf file), or a UsageError naming the fix.
    `sha256`: the content it must have (a recorded run's, or the config's pin)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{where}: no model at {path}; give a checkpoint directory or a .gguf file "
                         "(relative to the config's folder)")
    if path.is_dir():
        return _load_hf_dir(path, where, context, sha256)
    if path.suffix != ".gguf":
        raise UsageError(f"{where}: {path.name} is neither a checkpoint directory nor a .gguf file")
    return _load_gguf(path, where, context, sha256)


def _check_sha(got: str, want: str | None, where: str, path: Path) -> None:
    if want and got != want:
        raise UsageError(f"{where}: {path} has sha256 {got[:12]}…, not the {want[:12]}… asked for; give that "
                         "file (reinstall it: make venv) or drop the pin")


def _load_hf_dir(path: Path, where: str, context: int, sha256: str | None) -> WholeModel:
    transformers = _transformers()
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise UsageError(f"{where}: {path} has no weights (model.safetensors); save the model with save_pretrained")
    digest = hashlib.sha256("".join(sha256_file(file) for file in weights).encode()).hexdigest()
    _check_sha(digest, sha256, where, path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{where}: {path}/config.json does not load ({_first_line(e)}); save the model with "
                         "save_pretrained") from None
    _check_family(config.model_type, where)
    parameters = hf_parameters(weights, where)
    check_fits(parameters, where)
    tokenizer = _tokenizer(lambda: transformers.AutoTokenizer.from_pretrained(path, local_files_only=True),
                           where, path)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{where}: the weights in {path} do not load ({_first_line(e)}); re-save them with "
                         "save_pretrained") from None
    source = {"kind": "hf", "file": path.name, "sha256": digest, "family": config.model_type,
              "parameters": parameters, "weights": [file.name for file in weights],
              "config_sha256": sha256_file(path / "config.json")}
    return _rebuilt(hf.eval(), tokenizer, context, source, where)


def _load_gguf(path: Path, where: str, context: int, sha256: str | None) -> WholeModel:
    transformers = _transformers()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    digest = sha256_file(path)
    _check_sha(digest, sha256, where, path)
    arch, parameters, types = gguf_header(path, where)
    try:
        meta = load_gguf_checkpoint(str(path), return_tensors=False)
        config = transformers.AutoConfig.for_model(**meta["config"])
    except (ValueError, KeyError) as e:
        raise UsageError(f"{where}: GGUF architecture '{arch}' does not load ({_first_line(e)}); known families: "
                         f"{', '.join(FAMILIES)}") from None
    _check_family(config.model_type, where)
    check_fits(parameters, where)
    tokenizer = _tokenizer(lambda: transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name),
                           where, path)
    try:
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        with contextlib.redirect_stderr(io.StringIO()):  # its own progress bar
            tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=hf)["tensors"]
        missing = hf.load_state_dict({k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in tensors.items()},
                                     strict=False).missing_keys
    except NotImplementedError as e:
        raise UsageError(f"{where}: a tensor type of {path.name} cannot be dequantized by gguf ({_first_line(e)}); "
                         "convert the model to a type gguf reads (Q8_0, Q4_K, F16, ...)") from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise UsageError(f"{where}: the tensors of {path.name} do not fit its {config.model_type} architecture "
                         f"({_first_line(e)}); give a complete, unmodified model file") from None
    hf.tie_weights()
    lacking = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if lacking:
        raise UsageError(f"{where}: {path.name} lacks tensors its architecture needs ({lacking[0]}); give a "
                         "complete model file")
    source = {"kind": "gguf", "file": path.name, "sha256": digest, "family": config.model_type,
              "architecture": arch, "parameters": parameters,
              "tensor_types": list(types)}
    return _rebuilt(hf, tokenizer, context, source, where)


def _check_family(model_type: str, where: str) -> None:
    if model_type not in FAMILIES:
        raise UsageError(f"{where}: architecture '{model_type}' is not one ffnbench rebuilds; known: "
                         f"{', '.join(FAMILIES)}")


def _tokenizer(make, where: str, path: Path):
    try:
        tokenizer = make()
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{where}: no usable tokenizer with {path.name} ({_first_line(e)}); save the model's "
                         "tokenizer beside it (save_pretrained) or give a GGUF that holds one") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{where}: the tokenizer of {path.name} is not a fast (Rust) tokenizer, which bits per "
                         "byte need for byte offsets; save a tokenizer.json beside the model")
    return tokenizer


def _rebuilt(hf: torch.nn.Module, tokenizer, context: int, source: dict, where: str) -> WholeModel:
    """The RealLM of a transformers model, checked against the model's own forward on one window."""
    model = from_hf(hf, context, source)
    tokens = torch.randint(0, model.cfg.vocab, (1, model.cfg.context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        mine = model(tokens)
    err, scale = float((theirs - mine).abs().max()), float(theirs.abs().max())
    if not err <= PARITY_TOL * max(scale, 1.0):
        raise UsageError(f"{where}: rebuilt model differs from transformers' by {err:.3g} (largest logit "
                         f"{scale:.3g}); its {source['family']} variant is not one ffnbench rebuilds exactly")
    model.source = source | {"rebuild_max_abs_err": err,
                             # What makes its export and token windows, beyond the weights: a cached
                             # export is reused only when all of it is the same.
                             "identity": files.digest({"sha256": source["sha256"], "context": context,
                                                       "config": source.get("config_sha256"),
                                                       "loaders": loader_versions()})}
    return WholeModel(model, tokenizer, model.source)


def loader_versions() -> dict[str, str | None]:
    """The packages that read a whole model (GGUF dequantization, rotary frequencies, tokenization)."""
    import importlib.metadata

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in ("transformers", "tokenizers", "gguf")}
