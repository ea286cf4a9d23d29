"""The MLX backend's adapters: save/load in both layouts, fuse, and several adapters on one base
for chat (attach, select, detach).

One copy of the base: each attached adapter is a named set of LoRA tensors; selecting one wraps the
base's linear layers in LoRA layers of its shape (kept when the next has the same shape) and points
them at its tensors. Wrapping never copies the base's arrays. While a LoRA run trains, chat adapters
of the run's shape swap their tensors into its layers for the duration of a serving call
(base.ServingBackend) and the run's own are put back after it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .. import adapter_layout as layout, own_base
from ..base import TRAINING, CannotShare, FuseError, adapter_spec
from ..dtypes import checkpoint_dtype
from .device import DTYPES
from .model import (add_token_rows, apply_lora, densify_token_rows, is_quantized, mlx_weight_names, resolve_lora_keys,
                    save_model, strip_adapters, strip_token_rows)


class MLXAdapters:
    """Mixed into MLXBackend (backend.py), whose state it uses: model, optimizer, _kind, _attached,
    _active, _structure, _stash, _prompt_cache, _added, _loaded_spec, _config."""

    # ---- save and load ------------------------------------------------------------------------
    def _read_weights(self, path: Path) -> dict:
        """Adapter tensors (mlx layout) of a checkpoint, or every tensor of a full-model dir."""
        if (path / layout.MLX_SUBDIR / layout.MLX_WEIGHTS).exists():
            return mx.load(str(path / layout.MLX_SUBDIR / layout.MLX_WEIGHTS))
        weights = {}
        for f in sorted(path.glob("model*.safetensors")):
            weights.update(mx.load(str(f)))
        if not weights:
            raise FileNotFoundError(f"{path}: no adapter or model weights")
        return mlx_weight_names(weights, self.model_type)

    @staticmethod
    def _fit(weights: dict, params: dict, where: str = "") -> None:
        """The one check before tensors go into the model: every name present, every shape equal."""
        bad = layout.misfits(weights, params)
        if bad:
            raise ValueError(f"{where + ': ' if where else ''}adapter tensors do not fit this model: {bad[:5]}")

    def _load_weights(self, weights: dict, trainable_only: bool) -> None:
        params = dict(tree_flatten(self.model.trainable_parameters() if trainable_only else self.model.parameters()))
        self._fit(weights, params)
        self.model.load_weights([(k, v.astype(params[k].dtype)) for k, v in weights.items()], strict=False)

    def _spec(self) -> layout.AdapterSpec:
        if self._loaded_spec is not None:  # an adapter applied with load_adapter
            return self._loaded_spec
        return adapter_spec(self.cfg, self._kind)

    def save_adapter(self, path: Path) -> None:
        """`path/` PEFT layout + `path/mlx/` mlx-lm layout (see adapter_layout); full fine-tuning
        writes a standalone model (model.safetensors, config.json, tokenizer) that both
        mlx_lm.load and transformers load."""
        path = Path(path)
        self._require_model()
        trained = dict(tree_flatten(self.model.trainable_parameters()))
        if not trained:
            raise RuntimeError("mlx backend: no adapter to save (add_adapter or load_adapter first)")
        if self._kind == "full":  # the "adapter" is the whole model: a standalone HF/mlx-lm model dir
            from mlx_lm.utils import save_config

            save_model(path, self.model, self.model_type)
            save_config(dict(self._config), path / "config.json")
            self.tokenizer.save_pretrained(str(path))
            return
        weights = {k: np.array(v.astype(mx.float32)) for k, v in trained.items()}
        rows = {k: weights.pop(k) for k in [k for k in weights if k.endswith(".rows")]}
        layout.write_adapter(path, weights, self._spec(), n_model_layers=len(self.model.layers),
                             model_type=self.model_type)
        if self._added:
            head = [v for k, v in rows.items() if k.startswith("lm_head.")]
            embed = [v for k, v in rows.items() if k.endswith("embed_tokens.rows")]
            own_base.write_added_tokens(path, embed[0], head[0] if head else None, self._added,
                                      tokenizer=self.tokenizer)

    def load_adapter(self, path: Path) -> None:
        self._require_model()
        path = Path(path)
        full = own_base.full_finetune_weights(path)
        if full:  # a full fine-tune: every weight of the model
            strip_adapters(self.model)
            weights = {k: v for f in full for k, v in mx.load(str(f)).items()}
            self._load_weights(mlx_weight_names(weights, self.model_type), trainable_only=False)
            self.model.eval()
            return
        spec, weights = layout.read_adapter(path, model_type=self.model_type)
        model = self.model
        strip_adapters(model)
        self._attached, self._active, self._structure = {}, None, None
        self._prompt_cache.clear()
        added = own_base.read_added_tokens(path)
        if added is not None:
            self._apply_added_tokens(added)
        elif self._added:  # a previous adapter's token rows: back to the base vocabulary's rows
            strip_token_rows(model)
            self._added = None
        keys, num_layers = self._layers_of(spec)
        apply_lora(model, kind=spec.kind, keys=keys, num_layers=num_layers, r=spec.r, scale=spec.scale, dropout=0.0)
        params = dict(tree_flatten(model.parameters()))
        self._fit(weights, params, str(path))
        model.load_weights([(k, mx.array(v).astype(params[k].dtype)) for k, v in weights.items()], strict=False)
        model.eval()
        self._fns, self._kind, self._loaded_spec = {}, spec.kind, spec
        mx.eval(model.parameters())

    def _apply_added_tokens(self, added: dict) -> None:
        """Grow the vocabulary to the adapter's, with its trained rows; use its tokenizer (tokens,
        chat template) and stop at its end-of-turn token."""
        from transformers import AutoTokenizer

        add_token_rows(self.model, added["vocab_size"], added["token_ids"],
                       rows={"embed_tokens": added["embed_tokens"], "lm_head": added["lm_head"]})
        tok = AutoTokenizer.from_pretrained(str(added["dir"])) if added["has_tokenizer"] else self.tokenizer
        self._set_tokenizer(tok, added.get("end_of_turn"))
        self._added = {k: added[k] for k in ("token_ids", "tokens", "vocab_size", "end_of_turn")}

    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """mlx-lm's LoRA/DoRA `fuse` on the loaded base (load it in float32: the merge happens
        there), added-token rows made dense, saved in the checkpoint's dtype with mlx-lm's
        `save_model` (safetensors that transformers reads too) and the adapter's tokenizer. A
        quantized base on disk is refused unless `dequantize`: merging and re-quantizing can
        silently wash the adapter out (mlx-lm #1172)."""
        from mlx.utils import tree_unflatten
        from mlx_lm.tuner.dora import DoRALinear
        from mlx_lm.tuner.lora import LoRALinear
        from mlx_lm.utils import dequantize_model, save_config

        self._require_model()
        config = dict(self._config)
        if is_quantized(self.model):
            if not dequantize:
                raise FuseError(f"{self._model_path} is quantized: fusing into it "
                                f"would re-quantize the merged weights and can silently lose the adapter (mlx-lm "
                                f"#1172); fuse with dequantize=True (--dequantize) to write a float model, or fuse "
                                f"into the float base")
            self.model = dequantize_model(self.model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        self.load_adapter(adapter_path)
        model = self.model
        fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules()
                 if isinstance(m, (LoRALinear, DoRALinear))]
        if fused:
            model.update_modules(tree_unflatten(fused))
        self._structure, self._loaded_spec, self._added, self._fns = None, None, None, {}   # all in the weights now
        if (vocab := densify_token_rows(model)) is not None:
            config["vocab_size"] = vocab
        save_dtype = checkpoint_dtype(self._config)
        model.set_dtype(DTYPES[save_dtype])
        mx.eval(model.parameters())
        out = Path(out_dir)
        save_model(out, model, self.model_type)
        config["torch_dtype"] = save_dtype
        save_config(config, out / "config.json")
        self.tokenizer.save_pretrained(str(out))

    # ---- several adapters on one base (chat) ---------------------------------------------------
    def can_share_base(self) -> bool:
        """A LoRA/DoRA run on the checkpoint's own vocabulary: chat adapters of the run's LoRA shape
        swap their tensors into its LoRA layers for a serving call (the run's own are kept aside)."""
        return self.optimizer is not None and self._kind != "full" and not self._added

    def _training(self) -> bool:
        return self.optimizer is not None

    def _layers_of(self, spec: layout.AdapterSpec) -> tuple[list, int]:
        """(the LoRA keys, mlx-lm's num_layers) a saved adapter wraps on this model."""
        keys = spec.keys or resolve_lora_keys(self.model, spec.target_modules)
        return keys, layout.last_layers(spec, len(self.model.layers))

    def _structure_of(self, spec: layout.AdapterSpec) -> tuple:
        keys, num_layers = self._layers_of(spec)
        return self._shape(spec.kind, keys, num_layers, spec.r, spec.scale)

    def _shape(self, kind, keys, num_layers, r, scale) -> tuple:
        """What makes two adapters' LoRA layers the same layers (one form for a run and a saved adapter)."""
        n = len(self.model.layers)
        num_layers = n if num_layers is None or num_layers < 0 else min(num_layers, n)
        return kind, tuple(sorted(keys)), num_layers, int(r), round(float(scale), 6)

    def _wrap(self, structure) -> None:
        if structure == self._structure:
            return
        strip_adapters(self.model)
        if structure is not None:
            kind, keys, num_layers, r, scale = structure
            apply_lora(self.model, kind=kind, keys=list(keys), num_layers=num_layers, r=r, scale=scale, dropout=0.0)
        self._structure, self._fns = structure, {}

    def attach_adapter(self, name: str, path: Path) -> int:
        self._require_model()
        if own_base.changes_base(path):
            raise ValueError(f"{path}: a full fine-tune or an adapter with added tokens changes the base; "
                             "load it alone (load_adapter)")
        spec, weights = layout.read_adapter(path, model_type=self.model_type)
        structure = self._structure_of(spec)
        training = self.optimizer is not None
        if training and (not self.can_share_base() or structure != self._structure):
            raise CannotShare(f"{path}: its LoRA layers {structure[::2]} differ from the training run's "
                              f"{(self._structure or ())[::2]}")
        if not training:
            self._wrap(structure)
            self._active = None
        params = dict(tree_flatten(self.model.parameters()))
        self._fit(weights, params, str(path))
        arrays = {k: mx.array(v).astype(params[k].dtype) for k, v in weights.items()}
        mx.eval(list(arrays.values()))
        self._prompt_cache.clear()
        self._attached[name] = (structure, arrays)
        if not training:   # its layers are in place already: point them at its tensors
            self._select(name)
        return sum(int(a.nbytes) for a in arrays.values())

    def check_serves(self, adapter: Optional[str]) -> None:
        if adapter and adapter not in self._attached:
            raise ValueError(f"adapter {adapter!r} is not attached to this model")
        if not adapter and self.optimizer is not None and self._kind != "lora":
            raise CannotShare("the bare base of a DoRA run is not its layers with zero B")

    def _select(self, name: Optional[str]) -> None:
        if name == self._active:
            return
        if name == TRAINING:   # the run's own LoRA tensors back in place after a chat used another adapter
            if self.optimizer is not None and self._kind != "full":
                self.model.load_weights(list(self._stash.items()), strict=False)
                self._stash, self._active = {}, TRAINING
            return
        self.check_serves(name)
        if self.optimizer is not None:   # a training run: swap tensors, never the layers
            if self._active == TRAINING:
                self._stash = dict(tree_flatten(self.model.trainable_parameters()))
            arrays = self._attached[name][1] if name else \
                {k: mx.zeros_like(v) for k, v in self._stash.items() if k.endswith(".lora_b")}
            self.model.load_weights(list(arrays.items()), strict=False)
        elif name is None:
            self._wrap(None)
        else:
            structure, arrays = self._attached[name]
            self._wrap(structure)
            self.model.load_weights(list(arrays.items()), strict=False)
        self.model.eval()
        self._active = name

    def detach_adapter(self, name: str) -> None:
        self._prompt_cache.clear()
        if self._attached.pop(name, None) is not None and self._active == name:
            self._select(None)   # (a training run has its own adapter selected between serving calls)

    def weight_bytes(self) -> tuple[int, dict]:
        lora = (".lora_a", ".lora_b", ".m")
        base_bytes = sum(int(v.nbytes) for k, v in tree_flatten(self.model.parameters()) if not k.endswith(lora))
        adapters = {name: sum(int(a.nbytes) for a in arrays.values()) for name, (_, arrays) in self._attached.items()}
        if self.can_share_base():   # the run's own tensors: in the layers, or kept aside while a chat runs
            own = self._stash if self._active != TRAINING else dict(tree_flatten(self.model.trainable_parameters()))
            adapters[TRAINING] = sum(int(a.nbytes) for a in own.values())
        return base_bytes, adapters
