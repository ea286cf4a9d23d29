"""The torch backend's adapters: save/load in both layouts (and full fine-tunes), fuse, and
several adapters on one base for chat: PEFT named adapters (`add_adapter` +
`set_peft_model_state_dict(adapter_name=)`), selected with `set_adapter` / `disable_adapter_layers`
for the duration of a serving call (base.ServingBackend); after it the run's own adapter ("default")
is active and trainable again.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import adapter_layout as layout, own_base
from ..base import TRAINING, CannotShare, FuseError, adapter_spec
from . import model as tmodel


class TorchAdapters:
    """Mixed into TorchBackend (backend.py), whose state it uses: model, base, optimizer, cfg,
    device, _kind, _params, _tok, _eos, _added, _slots, _active, _next_slot, _prompt_cache, _ckpt_dtype."""

    # ---- save and load ------------------------------------------------------------------------
    def save_adapter(self, path: Path) -> None:
        """`path/` PEFT layout + `path/mlx/` mlx-lm layout (adapter_layout). Full fine-tuning writes
        a standalone Hugging Face model directory (which mlx_lm.load also reads). Adapters that
        mlx-lm cannot express (lora_bias other than none) are written in PEFT layout only."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._kind == "full":
            self._underlying().save_pretrained(path, safe_serialization=True)
            self._tok.save_pretrained(path)
            return
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model, save_embedding_layers=False)
        tokens = {k: v for k, v in sd.items() if "trainable_tokens_delta" in k}
        if self._added:
            self._write_added_tokens(path, tokens)
        if self.cfg.lora_bias != "none":
            self.model.save_pretrained(path, save_embedding_layers=False)
            return
        weights = {k: v.detach().float().cpu().numpy() for k, v in sd.items() if k not in tokens}
        layout.write_adapter(path, weights, adapter_spec(self.cfg, self._kind), layout="peft",
                             n_model_layers=tmodel.n_layers(self.base), model_type=self.base.config.model_type)

    def _write_added_tokens(self, path: Path, deltas: dict) -> None:
        """The added tokens' rows + tokenizer. While training, the rows are PEFT's trainable-token
        parameters (`...embed_tokens.token_adapter.trainable_tokens_delta`: the rows' values, not
        differences); with an adapter loaded for inference they sit in the resized base."""
        def rows(which: str):
            leaf = self._added.get("names", {}).get(which) or which   # the module's own name (embed_tokens, wte, ...)
            hit = [v for k, v in deltas.items() if k.split(".token_adapter")[0].rpartition(".")[2] == leaf]
            if hit:
                return hit[0].detach().float().cpu().numpy()
            layer = self.base.get_input_embeddings() if which == "embed_tokens" else self.base.get_output_embeddings()
            w = getattr(layer, "base_layer", layer).weight
            return w[self._added["token_ids"]].detach().float().cpu().numpy()
        head = None if self._added["tied"] else rows("lm_head")
        own_base.write_added_tokens(path, rows("embed_tokens"), head, self._added, tokenizer=self._tok)

    def _strip_adapter(self):
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model = self.base
        self._slots, self._active = {}, None
        self._prompt_cache.clear()
        return self.base

    def load_adapter(self, path: Path) -> None:
        """Apply an adapter in either layout (or a full fine-tune) for inference."""
        from peft import get_peft_model, set_peft_model_state_dict

        self._require_model()
        self._prompt_cache.clear()
        path = Path(path)
        full = own_base.full_finetune_weights(path)
        if full:  # a full fine-tune: every weight of the model
            return self._load_full(full)
        added = own_base.read_added_tokens(path)
        mt = self.base.config.model_type
        spec, mlx_weights = layout.read_adapter(path, prefer="peft", model_type=mt)
        sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
              for k, v in layout.mlx_to_peft(mlx_weights, mt).items()}
        base = self._strip_adapter()
        if added is not None:
            self._apply_added_tokens(base, added)
        self.model = get_peft_model(base, _lora_config(spec, base))
        res = set_peft_model_state_dict(self.model, sd)
        if res.unexpected_keys:
            raise ValueError(f"{path}: adapter tensors do not fit this model: {res.unexpected_keys[:5]}")
        self.model.to(self.device).eval()
        self.optimizer = None

    def _apply_added_tokens(self, base, added: dict) -> None:
        """Resize `base` to the adapter's vocabulary, write the trained rows in, switch to the
        adapter's tokenizer (its tokens and chat template) and stop at its end-of-turn token."""
        from transformers import AutoTokenizer

        tmodel.resize_vocab(base, added["vocab_size"], added["token_ids"],
                            rows={"embed_tokens": added["embed_tokens"], "lm_head": added["lm_head"]})
        if added["has_tokenizer"]:
            self._tok = AutoTokenizer.from_pretrained(str(added["dir"]))
        if added.get("end_of_turn"):
            self._eos.add(int(self._tok.convert_tokens_to_ids(added["end_of_turn"])))
        self._added = {k: added[k] for k in ("token_ids", "tokens", "vocab_size", "end_of_turn")}
        self._added["tied"] = tmodel.tied_head(base)

    @torch.no_grad()
    def _load_full(self, weights_files: list) -> None:
        from safetensors.torch import load_file

        base = self._strip_adapter()
        saved = {}
        for f in weights_files:
            saved.update(load_file(str(f)))
        res = base.load_state_dict(saved, strict=False)
        if res.unexpected_keys:
            raise ValueError(f"{weights_files[0]}: tensors not in this model: {res.unexpected_keys[:5]}")
        base.eval()

    @torch.no_grad()
    def fuse(self, adapter_path: Path, out_dir: Path, dequantize: bool = False) -> None:
        """PEFT's `merge_and_unload` on the loaded base (load it in float32: the merge happens
        there), saved with `save_pretrained` in the checkpoint's dtype with the adapter's tokenizer
        (added tokens: the grown vocabulary). A bitsandbytes-quantized base is refused unless
        `dequantize`, which de-quantizes it first and writes a float model."""
        from peft import PeftModel

        self._require_model()
        if tmodel.is_quantized(self.base):
            if not dequantize:
                raise FuseError(f"{self.base.name_or_path} is quantized: merging into it would re-quantize the "
                                f"merged weights and can silently lose the adapter (mlx-lm #1172); fuse with "
                                f"dequantize=True (--dequantize) to write a float model, or fuse into the float base")
            self._strip_adapter()
            self.base = self.model = self.base.dequantize().to(self.device)
        self.load_adapter(adapter_path)
        merged = self.model.merge_and_unload() if isinstance(self.model, PeftModel) else self.model
        self.base = self.model = merged
        self._slots, self._active = {}, None
        merged.to(getattr(torch, self._ckpt_dtype))
        merged.config.use_cache = True   # load_model turns it off for training
        merged.save_pretrained(out_dir, safe_serialization=True)
        self._tok.save_pretrained(str(out_dir))
        self._added = None

    # ---- several adapters on one base (chat) ---------------------------------------------------
    def can_share_base(self) -> bool:
        """A LoRA/DoRA run on the checkpoint's own vocabulary: chat adapters can sit beside its
        trainable adapter (PEFT named adapters) on this one base while it trains."""
        return self.optimizer is not None and self._kind != "full" and not self._added

    def _training(self) -> bool:
        return self.optimizer is not None

    def attach_adapter(self, name: str, path: Path) -> int:
        """PEFT named adapters on the one base: `add_adapter` + `set_peft_model_state_dict(adapter_name=)`;
        a serving call selects it with `set_adapter` (`_select`)."""
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        self._require_model()
        if own_base.changes_base(path):
            raise ValueError(f"{path}: a full fine-tune or an adapter with added tokens changes the base; "
                             "load it alone (load_adapter)")
        if self.optimizer is not None and not self.can_share_base():
            raise CannotShare("this training run changes its base (full fine-tune or added tokens)")
        mt = self.base.config.model_type
        spec, mlx_weights = layout.read_adapter(path, prefer="peft", model_type=mt)
        sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
              for k, v in layout.mlx_to_peft(mlx_weights, mt).items()}
        if name in self._slots:
            self.detach_adapter(name)
        self._prompt_cache.clear()
        self._next_slot += 1
        slot = f"tunerd_{self._next_slot}"
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(slot, _lora_config(spec, self.base))
        else:
            self.model = get_peft_model(self.base, _lora_config(spec, self.base), adapter_name=slot)
        self._slots[name] = slot
        res = set_peft_model_state_dict(self.model, sd, adapter_name=slot)
        if res.unexpected_keys:
            self.detach_adapter(name)
            raise ValueError(f"{path}: adapter tensors do not fit this model: {res.unexpected_keys[:5]}")
        self.model.to(self.device).eval()
        self._active = "?"   # PEFT may have switched: set it again
        self._select(TRAINING if self._training() else name)
        return self.weight_bytes()[1][name]

    def check_serves(self, adapter: Optional[str]) -> None:
        if adapter and adapter not in self._slots:
            raise ValueError(f"adapter {adapter!r} is not attached to this model")

    def _select(self, name: Optional[str]) -> None:
        from peft import PeftModel

        if name == self._active:
            return
        if name == TRAINING:   # the run's own adapter active and trainable again after a chat used another one
            if self.optimizer is not None and self._kind != "full":
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter("default")
                self.model.requires_grad_(False)
                for p in self._params:
                    p.requires_grad_(True)
                self._active = TRAINING
            return
        self.check_serves(name)
        if isinstance(self.model, PeftModel):
            if name is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter(self._slots[name])
                self.model.requires_grad_(False)   # set_adapter marks the adapter trainable
        self._active = name

    def detach_adapter(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        self._prompt_cache.clear()
        if not self._slots and self.optimizer is None:
            self._strip_adapter()   # the last one: back to the bare base module
            return
        self.model.delete_adapter(slot)
        self._active = "?"
        if self._training():
            self._select(TRAINING)

    def weight_bytes(self) -> tuple[int, dict]:
        slot_to_name = {slot: name for name, slot in self._slots.items()}
        if self.can_share_base():
            slot_to_name["default"] = TRAINING   # the training run's own adapter
        base, adapters = 0, {name: 0 for name in slot_to_name.values()}
        model = self.model if self.model is not None else self.base
        for n, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            size = t.numel() * t.element_size()
            owner = next((slot_to_name[part] for part in n.split(".") if part in slot_to_name), None)
            if owner is None:
                base += size
            else:
                adapters[owner] += size
        return base, adapters


def _lora_config(spec: layout.AdapterSpec, base):
    """The PEFT config of a saved adapter on `base`, for inference (no dropout)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=0.0, use_rslora=spec.use_rslora,
                      use_dora=spec.kind == "dora", target_modules=spec.target_modules,
                      layers_to_transform=spec.layers, fan_in_fan_out=tmodel.has_conv1d(base),
                      task_type="CAUSAL_LM")
