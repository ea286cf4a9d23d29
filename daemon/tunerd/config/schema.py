"""The training configuration: one dataclass per block, a help string on every field.

Keys follow Hugging Face names (DESIGN.md §3). YAML files, `--set key=value` overrides and the
proto's `TrainingConfig` all resolve into `TrainConfig` through `tunerd.config.loader`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union


def _f(default: Any, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    train: Any = _f(None, "training data: a file, a list of files, a directory, a hub dataset id, "
                          "or a list of source dicts ({path, name, split, revision, ...})")
    validation: Any = _f(None, "validation data (same forms as train); else `test_size` splits train")
    test: Any = _f(None, "optional held-out test data for evaluation")
    retain: Any = _f(None, "a retain set: general prompts with reference answers the model should keep "
                           "answering (same forms as train; 'general': the built-in 36 general-knowledge "
                           "Q/A). At each eval its retain_loss (and, with eval_generate_rows, retain_rougeL, "
                           "retain_exact_match, retain_changed: answers no longer the base's) sit next to "
                           "eval_loss; `tunerctl evaluate --base` shows them base vs tuned. Rows are read "
                           "in their own format (auto); none: off")
    format: str = _f("auto", "auto | text | prompt_response | alpaca | messages | preference ({prompt, chosen, "
                             "rejected}: task dpo / orpo)")
    text_column: Optional[str] = _f(None, "column holding plain text (format text)")
    prompt_column: Optional[str] = _f(None, "column holding the prompt")
    response_column: Optional[str] = _f(None, "column holding the response/completion")
    system_column: Optional[str] = _f(None, "column holding an optional system prompt")
    chosen_column: Optional[str] = _f(None, "column holding the preferred answer (format preference: task dpo / "
                                            "orpo); default 'chosen'")
    rejected_column: Optional[str] = _f(None, "column holding the dispreferred answer (format preference); "
                                              "default 'rejected'")
    system_prompt: Optional[str] = _f(None, "system prompt for every row of a chat format (prompt_response, "
                                            "alpaca, messages) that has none of its own; a row's system "
                                            "column or system message wins")
    messages_column: Optional[str] = _f(None, "column holding chat messages (format messages)")
    name: Optional[str] = _f(None, "hub dataset config name")
    split: Optional[str] = _f(None, "hub dataset split for train (default 'train')")
    revision: Optional[str] = _f(None, "hub dataset revision")
    streaming: bool = _f(False, "stream a hub dataset instead of downloading it whole")
    token: Optional[str] = _f(None, "hub token for private datasets")
    fraction: float = _f(1.0, "use this fraction of the training rows (0 < fraction <= 1)")
    shuffle: bool = _f(True, "shuffle rows before taking a fraction / splitting")
    seed: Optional[int] = _f(None, "data seed (defaults to the training seed)")
    test_size: float = _f(0.1, "validation share split off train when no validation set is given")
    template: str = _f("auto", "chat template: auto (tokenizer's own) | chatml | llama3 | alpaca")
    train_on_prompt: bool = _f(False, "also compute the loss on prompt tokens")
    operations: list = _f([], "data operations applied in order: concat, select_columns, "
                              "select_rows, filter, map, augment_instructions")
    max_rows: Optional[int] = _f(None, "cap the number of training rows")
    overlong: str = _f("truncate", "rows whose answer alone exceeds max_seq_length (after the prompt "
                                   "is cut from the left): truncate (cut the answer's end) | drop | "
                                   "error; they are always counted and named in the data report")
    group_by_length: bool = _f(True, "batch rows of similar length together (less padding); "
                                     "the order is still shuffled per epoch")


@dataclass
class DistributedConfig:
    """Data-parallel training on an existing engine's launcher (DESIGN.md §9, tunerd.distributed)."""
    backend: str = _f("auto", "auto (ddp for torch, mlx for mlx) | ddp | fsdp | mlx: the engine that averages "
                              "the gradients")
    nproc_per_node: int = _f(1, "processes (ranks) on each host: one per GPU, or 2+ CPU processes")
    hosts: list = _f([], "several machines: host names or IPs, rank 0's first (mlx.launch --hosts; torch: "
                         "start the same job on each); empty: this machine only")
    hostfile: Optional[str] = _f(None, "a hostfile (mlx.launch --hostfile JSON) instead of hosts")
    master_addr: str = _f("127.0.0.1", "the rendezvous address (rank 0's host)")
    master_port: int = _f(0, "the rendezvous port (0: a free one, for one machine)")

    @property
    def world_size(self) -> int:
        return max(1, self.nproc_per_node) * max(1, len(self.hosts))


@dataclass
class TrainConfig:
    # task (tunerd/tasks: what the rows become, the loss, the metrics; the loop is the same for all)
    task: str = _f("sft", "sft (next-token loss on the answers) | dpo (prefer `chosen` over `rejected` against "
                          "the base with the adapter off) | orpo (SFT on `chosen` + an odds-ratio penalty, no "
                          "reference)")
    beta: float = _f(0.1, "dpo: temperature of the implicit reward (higher: stay closer to the base); "
                          "orpo: weight of the odds-ratio term (lambda)")
    loss_type: str = _f("sigmoid", "dpo: sigmoid (the DPO paper) | ipo (squared, length-normalised) | hinge (SLiC)")
    label_smoothing: float = _f(0.0, "dpo sigmoid: the share of pairs assumed mislabelled (cDPO), 0 <= x < 0.5")
    # model
    model: str = _f("", "hub id or local path of the base model")
    revision: Optional[str] = _f(None, "model revision (branch, tag or commit) on the hub")
    backend: str = _f("auto", "auto | mlx | torch")
    device: str = _f("auto", "torch device: auto | cuda | mps | cpu")
    dtype: str = _f("auto", "auto | float32 | float16 | bfloat16: weights and activations. auto keeps a 16-bit "
                            "checkpoint's dtype on CUDA/MPS/Metal, and on a CPU where 16-bit matmuls are "
                            "measured faster; float32 otherwise (backends/dtypes.py)")
    quantization: str = _f("none", "none | 4bit (nf4/int4) | 8bit: quantize the frozen base (QLoRA)")
    bits: int = _f(4, "mlx: quantization bits when quantization is set")
    group_size: int = _f(64, "mlx: quantization group size")
    bnb_4bit_quant_type: str = _f("nf4", "torch/bitsandbytes: nf4 | fp4")
    bnb_4bit_use_double_quant: bool = _f(True, "torch/bitsandbytes: double quantization")
    trust_remote_code: bool = _f(False, "allow model code from the hub (torch backend)")
    # adapter
    peft_adapter: str = _f("lora", "lora | dora | full")
    lora_r: int = _f(8, "LoRA rank; higher adds capacity and memory")
    lora_alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with rslora)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input")
    lora_target_modules: Union[list, str] = _f("all-linear", "module names to adapt (e.g. [q_proj, v_proj]), or "
                                                             "'all-linear' (QLoRA's, mlx-lm's and Unsloth's default)")
    lora_bias: str = _f("none", "none | all | lora_only")
    num_layers: int = _f(-1, "adapt only the last N transformer layers (-1: all)")
    use_rslora: bool = _f(False, "rank-stabilised LoRA scaling alpha / sqrt(r)")
    # loop
    num_epochs: float = _f(1.0, "epochs over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps; > 0 overrides num_epochs")
    per_device_train_batch_size: int = _f(4, "rows per micro-batch")
    per_device_eval_batch_size: int = _f(8, "rows per eval batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float = _f(1e-4, "peak learning rate")
    optimizer: str = _f("adamw", "adamw | adam | sgd | adafactor | lion | ...")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.999, "Adam beta2")
    adam_epsilon: float = _f(1e-8, "Adam epsilon")
    weight_decay: float = _f(0.0, "decoupled weight decay")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    lr_scheduler_type: str = _f("linear", "linear | cosine | cosine_with_restarts | polynomial | constant | "
                                          "constant_with_warmup | inverse_sqrt | cosine_with_min_lr | "
                                          "warmup_stable_decay | reduce_lr_on_plateau")
    lr_scheduler_kwargs: dict = _f({}, "extra scheduler arguments (num_cycles, power, min_lr_rate, ...)")
    warmup_steps: int = _f(0, "linear warmup steps")
    warmup_ratio: float = _f(0.0, "warmup as a share of total steps (used when warmup_steps is 0)")
    seed: int = _f(42, "seed for adapter init, data order and dropout")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    max_seq_length: int = _f(2048, "tokens per row; longer prompts are cut from the left")
    packing: Union[bool, str] = _f("auto", "pack several rows per sequence (no attention across rows; same loss): "
                                           "true | false | auto (on for GPUs/Metal, where it is measured faster; "
                                           "off on a CPU)")
    # cadence
    logging_steps: int = _f(10, "emit a loss event every N optimizer steps")
    eval_strategy: str = _f("steps", "no | steps | epoch")
    eval_steps: int = _f(50, "evaluate every N steps (eval_strategy steps)")
    save_strategy: str = _f("steps", "no | steps | epoch")
    save_steps: int = _f(100, "checkpoint every N steps (save_strategy steps)")
    save_total_limit: Optional[int] = _f(None, "keep at most N checkpoints (the best is always kept)")
    load_best_model_at_end: bool = _f(False, "export the best checkpoint's adapter at the end")
    metric_for_best_model: str = _f("eval_loss", "metric that defines the best checkpoint")
    greater_is_better: Optional[bool] = _f(None, "whether a larger metric is better (default: not for *loss)")
    early_stopping_patience: Optional[int] = _f(None, "stop after N evals without improvement")
    early_stopping_threshold: float = _f(0.0, "minimum improvement that counts")
    eval_generate_rows: int = _f(0, "generate answers for the first N validation rows at each eval and add "
                                    "eval_rouge1/2/L/Lsum, eval_bleu and eval_exact_match (so "
                                    "metric_for_best_model: rougeL works); 0: off. Costs N generations per eval")
    eval_generate_max_tokens: int = _f(128, "new tokens per generated answer at eval (greedy)")
    eval_metric_tokenizer: str = _f("whitespace", "tokens for ROUGE/BLEU: whitespace (words of any script) | "
                                                  "char (letters: CJK/Korean without an analyser) | morpheme "
                                                  "(Korean, needs kiwipiepy)")
    resume_from_checkpoint: Optional[str] = _f(None, "a checkpoint path or 'latest'")
    output_dir: str = _f("", "where checkpoints, adapters and metrics go (default $TUNER_HOME/runs/<job>); "
                            "one job's own: new or empty, never another job's")
    debug: bool = _f(False, "smoke run: 50 train / 10 eval rows, 1 epoch, batch 2")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the data block (DESIGN.md §4)"})
    distributed: Optional[DistributedConfig] = field(default=None, metadata={
        "help": "data-parallel training over several processes/machines (torchrun, mlx.launch); none: one process"})

    @property
    def full_finetune(self) -> bool:
        """peft_adapter full: every weight trains, no adapter; what it saves is a whole model
        (recognised in a folder by backends/own_base.full_finetune_weights)."""
        return str(self.peft_adapter).lower() == "full"


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
