"""THOR weights: resolution (hub / local checkpoint / random), validation, loading, and a
process-wide, thread-safe cache of loaded models."""
from __future__ import annotations

import collections
import hashlib
import os
import re
import threading
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Tuple

import torch

from .errors import ThorWeightsError
from .specs import ENV_PREFIX, MODEL_VARIANTS, ModelSpec, ModelVariant

ENV_CKPT = ENV_PREFIX + "CKPT"
#: Keys (after stripping ``encoder.``) that belong to the pretraining decoder / unused embeddings.
IGNORED_PREFIXES = ("decoder_", "decode_", "ref_pos_embed", "pos_embed")
# How the algorithms' dialogs (and qgis_process, by parameter name) call the weights settings: messages
# name these, not the engine's internal "weights = hub/checkpoint/random".
FIELD_PRETRAINED = "'Use the pretrained weights' (PRETRAINED)"
FIELD_CHECKPOINT = "'Local checkpoint' (CHECKPOINT)"
RANDOM_WEIGHTS_WARNING = (
    f"THOR is running with RANDOM weights ({FIELD_PRETRAINED} is off): the embeddings carry no pretrained "
    f"knowledge and are only good for testing. Turn {FIELD_PRETRAINED} on, or give a {FIELD_CHECKPOINT}, "
    "for real embeddings.")
#: seconds to wait for the Hub to answer before deciding it cannot be reached (THOR_HUB_PROBE_TIMEOUT)
HUB_PROBE_TIMEOUT = 4.0

LogFn = Optional[Callable[[str], None]]


def _log(log: LogFn, msg: str) -> None:
    if log is not None:
        try:
            log(msg)
        except Exception:  # a broken logger must not break a run
            pass


def how_to_pass_checkpoint(variant: ModelVariant) -> str:
    return (f"To run without the Hub, download {variant.hub_file} from https://huggingface.co/{variant.hub_repo} "
            f"(Files tab) on a computer with internet access and choose it as the {FIELD_CHECKPOINT}, "
            f"or set the environment variable {ENV_CKPT}=/path/to/{variant.hub_file}.")


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------

_SHA_LOCK = threading.Lock()
_SHA_MEMO: Dict[Tuple[str, int, int], str] = {}


def sha256_file(path: str) -> str:
    """sha256 of a file, remembered per (real path, size, mtime) so unchanged files hash once."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise ThorWeightsError(f"THOR checkpoint not readable: {path} ({exc.strerror or exc})") from None
    key = (real, int(st.st_size), int(st.st_mtime_ns))
    with _SHA_LOCK:
        hit = _SHA_MEMO.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    try:
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ThorWeightsError(f"THOR checkpoint not readable: {path} ({exc.strerror or exc})") from None
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_MEMO[key] = digest
    return digest


# --------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------


def hub_checkpoint_path(variant: ModelVariant, log: LogFn = None) -> str:
    """Path of the official checkpoint in the Hugging Face cache, downloading it if needed."""
    try:
        from huggingface_hub import hf_hub_download  # lazy: only the hub path needs it
    except Exception as exc:
        raise ThorWeightsError(
            f"{FIELD_PRETRAINED} needs the Python package huggingface_hub, which could not be imported ({exc}). "
            + how_to_pass_checkpoint(variant)) from None
    # A checkpoint already in the cache is used as it is: asking the Hub whether it changed would cost
    # about 20 s of retries on a machine without network, on every run.
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id=variant.hub_repo, filename=variant.hub_file)
        if isinstance(cached, str) and os.path.isfile(cached):
            _log(log, f"THOR weights: {variant.hub_repo}/{variant.hub_file}, from the Hugging Face cache")
            return cached
    except Exception:  # an unusual cache layout: fall through to the normal download path
        pass
    _log(log, f"THOR weights {variant.hub_repo}/{variant.hub_file} are not cached yet: checking that the "
              "Hugging Face hub can be reached …")
    unreachable = hub_unreachable_reason()
    if unreachable:
        raise ThorWeightsError(
            f"The official THOR weights {variant.hub_repo}/{variant.hub_file} are not in this computer's "
            f"Hugging Face cache, and the Hugging Face hub cannot be reached ({unreachable}). "
            + how_to_pass_checkpoint(variant)
            + f" To try the tools without weights, turn {FIELD_PRETRAINED} off (random weights).")
    _log(log, f"Downloading {variant.hub_file} from the Hugging Face hub ({variant.hub_repo}) into the cache; "
              "this is done once.")
    kwargs: Dict[str, Any] = {}
    try:
        import inspect

        if "tqdm_class" in inspect.signature(hf_hub_download).parameters:
            kwargs["tqdm_class"] = _download_reporter(variant.hub_file, log)
    except (TypeError, ValueError, ImportError):
        pass
    try:
        return hf_hub_download(repo_id=variant.hub_repo, filename=variant.hub_file, **kwargs)
    except Exception as exc:
        name = type(exc).__name__
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in str(exc).lower():
            why = ("is not in the local Hugging Face cache and the Hub cannot be reached "
                   "(offline mode, no network, or a proxy blocks huggingface.co)")
        elif name in ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError",
                      "EntryNotFoundError", "RemoteEntryNotFoundError"):
            why = f"could not be downloaded from the Hub ({name}: {_short(exc)})"
        else:
            why = f"could not be downloaded ({name}: {_short(exc)})"
        raise ThorWeightsError(
            f"THOR weights {variant.hub_repo}/{variant.hub_file} {why}. " + how_to_pass_checkpoint(variant)
        ) from None


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_unreachable_reason(timeout: Optional[float] = None) -> str:
    """"" when the Hub answers an HTTP request within ``timeout`` seconds, else why not (in words).

    One short probe instead of the Hub client's own retries, which spend 20 s or more before giving up on
    a machine without network. A proxy from the environment is used as the client would use it. The
    Hub's offline mode (HF_HUB_OFFLINE=1) counts as unreachable."""
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "the Hugging Face offline mode is on (HF_HUB_OFFLINE)"
    if timeout is None:
        try:
            timeout = float(os.environ.get("THOR_HUB_PROBE_TIMEOUT", HUB_PROBE_TIMEOUT))
        except ValueError:
            timeout = HUB_PROBE_TIMEOUT
    url = hub_endpoint() + "/api/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError:
        return ""  # it answered: reachable (the download reports its own errors)
    except Exception as exc:  # URLError, timeout, connection refused, TLS failure, bad proxy ...
        reason = getattr(exc, "reason", exc)
        return f"no answer from {hub_endpoint()} within {timeout:g} s: {_short(reason, 160)}"


def _download_reporter(filename: str, log: LogFn):
    """A tqdm class for the Hub client that logs the download's progress in MB, at most every 5 %."""
    from tqdm.auto import tqdm as _tqdm

    class _Reporter(_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # no console output (stdout is qgis_process's channel)
            self._devnull = kwargs["file"]
            self._last = -1
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            total = self.total or 0
            if total > 1 << 20:
                step = int(20 * self.n / total)
                if step != self._last:
                    self._last = step
                    _log(log, f"Downloading {filename}: {self.n / 2**20:.0f} of {total / 2**20:.0f} MB "
                              f"({100 * self.n / total:.0f} %)")
            return out

        def close(self):
            super().close()
            try:
                self._devnull.close()
            except Exception:
                pass

    return _Reporter


def _short(exc: BaseException, limit: int = 300) -> str:
    s = " ".join(str(exc).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _hub_revision(path: str) -> Optional[str]:
    m = re.search(r"[\\/]snapshots[\\/]([0-9a-fA-F]{7,64})[\\/]", path)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Load a checkpoint file and return its encoder state dict (``encoder.`` stripped,
    decoder / unused position-embedding keys dropped)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ThorWeightsError(
            f"THOR checkpoint not found: {p}. Check the path given as the {FIELD_CHECKPOINT} "
            f"(or in {ENV_CKPT}).")
    if os.path.isdir(p):
        raise ThorWeightsError(f"THOR checkpoint path is a folder, not a file: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ThorWeightsError(
            f"could not read THOR checkpoint {p} ({type(exc).__name__}: {_short(exc)}). It must be a PyTorch "
            "weights file such as thor_v1_vit_base.pt from https://huggingface.co/FM4CS/THOR-1.0-base, "
            "readable with torch.load(weights_only=True).") from None
    return extract_encoder_state(obj, p)


def extract_encoder_state(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Encoder weights from a loaded checkpoint: hub format (``encoder.``-prefixed keys,
    optionally under ``state_dict``) or bare encoder keys."""
    if not isinstance(obj, Mapping):
        raise ThorWeightsError(f"{source} does not hold a state dict (it holds a {type(obj).__name__})")
    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    keys = [k for k in sd.keys() if isinstance(k, str)]
    prefixed = any(k.split(".", 1)[0] == "encoder" and "." in k for k in keys)
    out: Dict[str, torch.Tensor] = {}
    for k in keys:
        v = sd[k]
        if not torch.is_tensor(v):
            continue
        if prefixed:
            head, _, rest = k.partition(".")
            if head != "encoder" or not rest:
                continue
            k = rest
        if k.startswith(IGNORED_PREFIXES):
            continue
        out[k] = v
    if not out:
        raise ThorWeightsError(f"{source} contains no THOR encoder weights (no tensors found)")
    return out


def guess_model_key(state: Mapping[str, torch.Tensor]) -> Tuple[Optional[str], str]:
    """Which THOR v1 size a state dict looks like: (model key or None, description)."""
    dim = None
    for k in ("norm.weight", "norm.bias"):
        if k in state and state[k].ndim == 1:
            dim = int(state[k].shape[0])
            break
    if dim is None:
        for k, v in state.items():
            if k.startswith("ind_patch_embed.patch_embed.") and k.endswith(".weight") and v.ndim == 4:
                dim = int(v.shape[0])
                break
    depth_idx = [int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in state) if m]
    depth = max(depth_idx) + 1 if depth_idx else 0
    desc = f"embed dim {dim if dim is not None else '?'}, {depth} blocks"
    for key, var in MODEL_VARIANTS.items():
        if var.embed_dim == dim and var.depth == depth:
            return key, desc
    return None, desc


def _fmt_keys(keys: List[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], model_key: str,
                     source: str) -> List[str]:
    """Raise :class:`ThorWeightsError` unless ``state`` fits ``model`` exactly (every key present
    with the right shape). Returns the keys the model does not use (harmless, reported)."""
    expected = model.state_dict()
    guess, desc = guess_model_key(state)
    if guess is not None and guess != model_key:
        raise ThorWeightsError(
            f"the checkpoint {source} looks like {guess} ({desc}), not {model_key}. Choose the model "
            f"key {guess}, or pass the {model_key} checkpoint ({MODEL_VARIANTS[model_key].hub_file}).")
    missing = [k for k in expected if k not in state]
    misshaped = [f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
                 for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if guess is None and (missing or misshaped):
        extra = ""
        if len(missing) == len(expected):
            extra = " None of the THOR encoder keys are in it."
        raise ThorWeightsError(
            f"the checkpoint {source} does not look like a THOR v1 encoder checkpoint of any size ({desc})."
            f"{extra} Missing: {_fmt_keys(missing) or 'none'}. Mis-shaped: {_fmt_keys(misshaped) or 'none'}.")
    if missing:
        raise ThorWeightsError(
            f"the checkpoint {source} lacks {len(missing)} {model_key} encoder weight(s): {_fmt_keys(missing)}. "
            "Is it a complete THOR v1 checkpoint?")
    if misshaped:
        raise ThorWeightsError(
            f"the checkpoint {source} has {len(misshaped)} weight(s) of the wrong shape for {model_key}: "
            f"{_fmt_keys(misshaped)}")
    return sorted(k for k in state if k not in expected)


def validate_checkpoint_file(path: str, model_key: str) -> List[str]:
    """Check that a checkpoint file fits ``model_key`` exactly, without building real weights
    (the encoder skeleton lives on torch's meta device). Returns the unused keys."""
    from .encoder import ThorEncoder

    with torch.device("meta"):
        skeleton = ThorEncoder(MODEL_VARIANTS[model_key])
    return check_state_dict(skeleton, read_checkpoint(path), model_key, path)


def load_state_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], model_key: str,
                    source: str, log: LogFn = None) -> List[str]:
    unexpected = check_state_dict(model, state, model_key, source)
    if unexpected:
        _log(log, f"THOR checkpoint: ignoring {len(unexpected)} key(s) the encoder does not use: "
                  f"{_fmt_keys(unexpected)}")
    own = model.state_dict()
    filtered = {k: state[k] if state[k].dtype == own[k].dtype else state[k].to(own[k].dtype) for k in own}
    if any(t.is_meta for t in own.values()):
        # skeleton built on the meta device: take the loaded tensors as they are (no copy)
        model.load_state_dict(filtered, strict=True, assign=True)
    else:
        model.load_state_dict(filtered, strict=True)
    return unexpected


# --------------------------------------------------------------------------------------------
# Resolution: what weights a ModelSpec means, without loading them
# --------------------------------------------------------------------------------------------


def _local_checkpoint_path(model: ModelSpec) -> str:
    path = os.path.abspath(os.path.expanduser(str(model.checkpoint)))
    if not os.path.exists(path):
        raise ThorWeightsError(
            f"THOR checkpoint not found: {path}. Check the path given as the {FIELD_CHECKPOINT} "
            f"(or in {ENV_CKPT}).")
    if os.path.isdir(path):
        raise ThorWeightsError(f"THOR checkpoint path is a folder, not a file: {path}")
    return path


def weights_token(model: ModelSpec) -> Tuple[Hashable, ...]:
    """The weights part of a model-cache key: ("hub", repo, file) | ("checkpoint", path, sha256)
    | ("random",). Hashes a local checkpoint (memoised) but loads nothing."""
    if model.weights == "hub":
        return ("hub", model.variant.hub_repo, model.variant.hub_file)
    if model.weights == "checkpoint":
        path = _local_checkpoint_path(model)
        return ("checkpoint", os.path.realpath(path), sha256_file(path))
    return ("random",)


def resolve_checkpoint_file(model: ModelSpec, log: LogFn = None) -> Tuple[Optional[str], Dict[str, Any]]:
    """(local file path or None for random, weights metadata)."""
    if model.weights == "hub":
        path = hub_checkpoint_path(model.variant, log)
        meta: Dict[str, Any] = {"source": "hub", "repo": model.variant.hub_repo, "file": model.variant.hub_file}
        rev = _hub_revision(path)
        if rev:
            meta["revision"] = rev
        return path, meta
    if model.weights == "checkpoint":
        path = _local_checkpoint_path(model)
        return path, {"source": "checkpoint", "path": path, "sha256": sha256_file(path)}
    return None, {"source": "random", "warning": RANDOM_WEIGHTS_WARNING}


def _empty_encoder(variant: ModelVariant):
    """An encoder skeleton on torch's meta device (no storage, no default init: that takes
    seconds for large); the strict load that follows assigns every tensor."""
    import inspect

    from .encoder import ThorEncoder

    if "assign" in inspect.signature(torch.nn.Module.load_state_dict).parameters:
        try:
            with torch.device("meta"):
                return ThorEncoder(variant)
        except Exception:  # torch without device contexts
            pass
    return ThorEncoder(variant)


def load_builtin_encoder(model: ModelSpec, log: LogFn = None):
    """Build the builtin encoder for ``model`` and load its weights (on CPU).

    Returns (encoder, weights metadata, warnings). Random weights only when
    ``model.weights == "random"``, with a loud warning.
    """
    from .encoder import ThorEncoder

    path, meta = resolve_checkpoint_file(model, log)
    warnings: List[str] = []
    if path is None:
        enc = ThorEncoder(model.variant)
        enc.init_random(seed=0)
        warnings.append(RANDOM_WEIGHTS_WARNING)
        _log(log, "WARNING: " + RANDOM_WEIGHTS_WARNING)
        return enc, meta, warnings
    state = read_checkpoint(path)
    enc = _empty_encoder(model.variant)
    unexpected = load_state_into(enc, state, model.model_key, path, log)
    del state
    if unexpected:
        warnings.append(f"checkpoint keys not used by the encoder: {_fmt_keys(unexpected)}")
    _log(log, f"THOR weights loaded: {model.model_key} from {path}")
    return enc, meta, warnings


# --------------------------------------------------------------------------------------------
# Process-wide model cache
# --------------------------------------------------------------------------------------------


class ModelCache:
    """A small LRU of loaded models, shared by every run in the process.

    Keys are tuples (model key, weights token, device, patch size, backend, ...). Access is
    serialised by a lock (Processing runs algorithms in worker threads); a model is loaded
    at most once per key even when two threads ask for it at the same time.
    """

    def __init__(self, max_entries: int = 4):
        self.max_entries = int(max_entries)
        self._lock = threading.RLock()
        self._entries: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()

    def get_or_create(self, key: Hashable, factory: Callable[[], Any]) -> Tuple[Any, bool]:
        """(value, was_cached)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], True
            value = factory()
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return value, False

    def get(self, key: Hashable) -> Any:
        with self._lock:
            return self._entries.get(key)

    def keys(self) -> List[Hashable]:
        with self._lock:
            return list(self._entries.keys())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


MODEL_CACHE = ModelCache()


def clear_model_cache() -> None:
    MODEL_CACHE.clear()
