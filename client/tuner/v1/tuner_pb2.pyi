from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
    INTERRUPTED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
INTERRUPTED: JobState

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "backend", "memory_total_bytes", "memory_free_bytes", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    memory_total_bytes: int
    memory_free_bytes: int
    detail: str
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    version: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Info(_message.Message):
    __slots__ = ("version", "api_version", "backends", "devices", "default_backend", "home", "pid", "uptime_seconds", "memory_total_bytes", "memory_available_bytes", "active_sequences", "peak_active_sequences")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    PEAK_ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    version: str
    api_version: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    default_backend: str
    home: str
    pid: int
    uptime_seconds: float
    memory_total_bytes: int
    memory_available_bytes: int
    active_sequences: int
    peak_active_sequences: int
    def __init__(self, version: _Optional[str] = ..., api_version: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., default_backend: _Optional[str] = ..., home: _Optional[str] = ..., pid: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., active_sequences: _Optional[int] = ..., peak_active_sequences: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "backend", "quantization", "dtype", "revision", "keep_alive_seconds", "adapter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    quantization: str
    dtype: str
    revision: str
    keep_alive_seconds: float
    adapter: str
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., dtype: _Optional[str] = ..., revision: _Optional[str] = ..., keep_alive_seconds: _Optional[float] = ..., adapter: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "backend", "quantization", "memory_bytes", "loaded_at", "last_used_at", "expires_at", "adapters", "dtype", "dtype_reason", "base_bytes", "attached", "requested_dtype", "active_sequences", "peak_active_sequences", "context_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    BASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    PEAK_ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    quantization: str
    memory_bytes: int
    loaded_at: float
    last_used_at: float
    expires_at: float
    adapters: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    dtype_reason: str
    base_bytes: int
    attached: _containers.RepeatedCompositeFieldContainer[AttachedAdapter]
    requested_dtype: str
    active_sequences: int
    peak_active_sequences: int
    context_length: int
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., loaded_at: _Optional[float] = ..., last_used_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., adapters: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., dtype_reason: _Optional[str] = ..., base_bytes: _Optional[int] = ..., attached: _Optional[_Iterable[_Union[AttachedAdapter, _Mapping]]] = ..., requested_dtype: _Optional[str] = ..., active_sequences: _Optional[int] = ..., peak_active_sequences: _Optional[int] = ..., context_length: _Optional[int] = ...) -> None: ...

class AttachedAdapter(_message.Message):
    __slots__ = ("name", "path", "memory_bytes", "loaded_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    memory_bytes: int
    loaded_at: float
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., loaded_at: _Optional[float] = ...) -> None: ...

class DownloadProgress(_message.Message):
    __slots__ = ("model", "file", "files_done", "files_total", "file_bytes_done", "file_bytes_total", "bytes_done", "bytes_total", "bytes_per_second", "eta_seconds", "elapsed_seconds", "done")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    model: str
    file: str
    files_done: int
    files_total: int
    file_bytes_done: int
    file_bytes_total: int
    bytes_done: int
    bytes_total: int
    bytes_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    done: bool
    def __init__(self, model: _Optional[str] = ..., file: _Optional[str] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., file_bytes_done: _Optional[int] = ..., file_bytes_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., done: _Optional[bool] = ...) -> None: ...

class LoadModelProgress(_message.Message):
    __slots__ = ("download", "status")
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    download: DownloadProgress
    status: ModelStatus
    def __init__(self, download: _Optional[_Union[DownloadProgress, _Mapping]] = ..., status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model", "adapter", "backend", "quantization", "dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    backend: str
    quantization: str
    dtype: str
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded", "count")
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    count: int
    def __init__(self, unloaded: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("path", "name", "split", "revision", "streaming")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    split: str
    revision: str
    streaming: bool
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ..., split: _Optional[str] = ..., revision: _Optional[str] = ..., streaming: _Optional[bool] = ...) -> None: ...

class DataConfig(_message.Message):
    __slots__ = ("train", "validation", "test", "format", "text_column", "prompt_column", "response_column", "system_column", "messages_column", "name", "split", "revision", "streaming", "fraction", "shuffle", "seed", "test_size", "template", "train_on_prompt", "max_rows", "overlong", "group_by_length", "system_prompt", "token", "operations", "retain", "chosen_column", "rejected_column")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_COLUMN_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_COLUMN_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_COLUMN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    RETAIN_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_COLUMN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COLUMN_FIELD_NUMBER: _ClassVar[int]
    train: _containers.RepeatedScalarFieldContainer[str]
    validation: _containers.RepeatedScalarFieldContainer[str]
    test: _containers.RepeatedScalarFieldContainer[str]
    format: str
    text_column: str
    prompt_column: str
    response_column: str
    system_column: str
    messages_column: str
    name: str
    split: str
    revision: str
    streaming: bool
    fraction: float
    shuffle: bool
    seed: int
    test_size: float
    template: str
    train_on_prompt: bool
    max_rows: int
    overlong: str
    group_by_length: bool
    system_prompt: str
    token: str
    operations: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    retain: _containers.RepeatedScalarFieldContainer[str]
    chosen_column: str
    rejected_column: str
    def __init__(self, train: _Optional[_Iterable[str]] = ..., validation: _Optional[_Iterable[str]] = ..., test: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ..., text_column: _Optional[str] = ..., prompt_column: _Optional[str] = ..., response_column: _Optional[str] = ..., system_column: _Optional[str] = ..., messages_column: _Optional[str] = ..., name: _Optional[str] = ..., split: _Optional[str] = ..., revision: _Optional[str] = ..., streaming: _Optional[bool] = ..., fraction: _Optional[float] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ..., test_size: _Optional[float] = ..., template: _Optional[str] = ..., train_on_prompt: _Optional[bool] = ..., max_rows: _Optional[int] = ..., overlong: _Optional[str] = ..., group_by_length: _Optional[bool] = ..., system_prompt: _Optional[str] = ..., token: _Optional[str] = ..., operations: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., retain: _Optional[_Iterable[str]] = ..., chosen_column: _Optional[str] = ..., rejected_column: _Optional[str] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("model", "revision", "backend", "device", "dtype", "quantization", "bits", "group_size", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "trust_remote_code", "peft_adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_bias", "num_layers", "use_rslora", "num_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate", "optimizer", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "seed", "gradient_checkpointing", "max_seq_length", "packing", "logging_steps", "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "early_stopping_patience", "early_stopping_threshold", "resume_from_checkpoint", "output_dir", "debug", "data", "eval_generate_rows", "eval_generate_max_tokens", "eval_metric_tokenizer", "task", "beta", "loss_type", "label_smoothing", "distributed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    BNB_4BIT_QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BNB_4BIT_USE_DOUBLE_QUANT_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    PEFT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LORA_R_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    LORA_BIAS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    USE_RSLORA_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_TRAIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_EVAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    ADAM_BETA1_FIELD_NUMBER: _ClassVar[int]
    ADAM_BETA2_FIELD_NUMBER: _ClassVar[int]
    ADAM_EPSILON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_TYPE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_KWARGS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LOAD_BEST_MODEL_AT_END_FIELD_NUMBER: _ClassVar[int]
    METRIC_FOR_BEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    GREATER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVAL_GENERATE_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVAL_GENERATE_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVAL_METRIC_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    backend: str
    device: str
    dtype: str
    quantization: str
    bits: int
    group_size: int
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    trust_remote_code: bool
    peft_adapter: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: _containers.RepeatedScalarFieldContainer[str]
    lora_bias: str
    num_layers: int
    use_rslora: bool
    num_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    optimizer: str
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    weight_decay: float
    max_grad_norm: float
    lr_scheduler_type: str
    lr_scheduler_kwargs: _struct_pb2.Struct
    warmup_steps: int
    warmup_ratio: float
    seed: int
    gradient_checkpointing: bool
    max_seq_length: int
    packing: bool
    logging_steps: int
    eval_strategy: str
    eval_steps: int
    save_strategy: str
    save_steps: int
    save_total_limit: int
    load_best_model_at_end: bool
    metric_for_best_model: str
    greater_is_better: bool
    early_stopping_patience: int
    early_stopping_threshold: float
    resume_from_checkpoint: str
    output_dir: str
    debug: bool
    data: DataConfig
    eval_generate_rows: int
    eval_generate_max_tokens: int
    eval_metric_tokenizer: str
    task: str
    beta: float
    loss_type: str
    label_smoothing: float
    distributed: DistributedConfig
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., bits: _Optional[int] = ..., group_size: _Optional[int] = ..., bnb_4bit_quant_type: _Optional[str] = ..., bnb_4bit_use_double_quant: _Optional[bool] = ..., trust_remote_code: _Optional[bool] = ..., peft_adapter: _Optional[str] = ..., lora_r: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., lora_dropout: _Optional[float] = ..., lora_target_modules: _Optional[_Iterable[str]] = ..., lora_bias: _Optional[str] = ..., num_layers: _Optional[int] = ..., use_rslora: _Optional[bool] = ..., num_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., per_device_train_batch_size: _Optional[int] = ..., per_device_eval_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., adam_beta1: _Optional[float] = ..., adam_beta2: _Optional[float] = ..., adam_epsilon: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., lr_scheduler_type: _Optional[str] = ..., lr_scheduler_kwargs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., warmup_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., seed: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., max_seq_length: _Optional[int] = ..., packing: _Optional[bool] = ..., logging_steps: _Optional[int] = ..., eval_strategy: _Optional[str] = ..., eval_steps: _Optional[int] = ..., save_strategy: _Optional[str] = ..., save_steps: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., load_best_model_at_end: _Optional[bool] = ..., metric_for_best_model: _Optional[str] = ..., greater_is_better: _Optional[bool] = ..., early_stopping_patience: _Optional[int] = ..., early_stopping_threshold: _Optional[float] = ..., resume_from_checkpoint: _Optional[str] = ..., output_dir: _Optional[str] = ..., debug: _Optional[bool] = ..., data: _Optional[_Union[DataConfig, _Mapping]] = ..., eval_generate_rows: _Optional[int] = ..., eval_generate_max_tokens: _Optional[int] = ..., eval_metric_tokenizer: _Optional[str] = ..., task: _Optional[str] = ..., beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., label_smoothing: _Optional[float] = ..., distributed: _Optional[_Union[DistributedConfig, _Mapping]] = ...) -> None: ...

class DistributedConfig(_message.Message):
    __slots__ = ("backend", "nproc_per_node", "hosts", "hostfile", "master_addr", "master_port")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    HOSTFILE_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    backend: str
    nproc_per_node: int
    hosts: _containers.RepeatedScalarFieldContainer[str]
    hostfile: str
    master_addr: str
    master_port: int
    def __init__(self, backend: _Optional[str] = ..., nproc_per_node: _Optional[int] = ..., hosts: _Optional[_Iterable[str]] = ..., hostfile: _Optional[str] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("config", "config_path", "config_yaml", "base_dir", "overrides", "name")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    config: TrainingConfig
    config_path: str
    config_yaml: str
    base_dir: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    name: str
    def __init__(self, config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., config_path: _Optional[str] = ..., config_yaml: _Optional[str] = ..., base_dir: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "state", "created_at", "started_at", "finished_at", "model", "backend", "output_dir", "adapter_path", "error", "step", "total_steps", "last_loss", "best_eval_loss", "config_json", "last_sequence", "queue_position", "metrics_path", "tensorboard_dir", "exports")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_LOSS_FIELD_NUMBER: _ClassVar[int]
    BEST_EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    METRICS_PATH_FIELD_NUMBER: _ClassVar[int]
    TENSORBOARD_DIR_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: JobState
    created_at: float
    started_at: float
    finished_at: float
    model: str
    backend: str
    output_dir: str
    adapter_path: str
    error: str
    step: int
    total_steps: int
    last_loss: float
    best_eval_loss: float
    config_json: str
    last_sequence: int
    queue_position: int
    metrics_path: str
    tensorboard_dir: str
    exports: _containers.RepeatedCompositeFieldContainer[ExportRecord]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., output_dir: _Optional[str] = ..., adapter_path: _Optional[str] = ..., error: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., last_loss: _Optional[float] = ..., best_eval_loss: _Optional[float] = ..., config_json: _Optional[str] = ..., last_sequence: _Optional[int] = ..., queue_position: _Optional[int] = ..., metrics_path: _Optional[str] = ..., tensorboard_dir: _Optional[str] = ..., exports: _Optional[_Iterable[_Union[ExportRecord, _Mapping]]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "from_sequence", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_sequence: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., from_sequence: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "states")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    limit: int
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, limit: _Optional[int] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "state_changed", "started", "log", "step", "eval", "checkpoint", "finished", "failed", "cancelled", "download")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: float
    state_changed: StateChanged
    started: TrainingStarted
    log: LogMessage
    step: StepMetrics
    eval: EvalMetrics
    checkpoint: CheckpointSaved
    finished: TrainingFinished
    failed: TrainingFailed
    cancelled: TrainingCancelled
    download: DownloadProgress
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[float] = ..., state_changed: _Optional[_Union[StateChanged, _Mapping]] = ..., started: _Optional[_Union[TrainingStarted, _Mapping]] = ..., log: _Optional[_Union[LogMessage, _Mapping]] = ..., step: _Optional[_Union[StepMetrics, _Mapping]] = ..., eval: _Optional[_Union[EvalMetrics, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., finished: _Optional[_Union[TrainingFinished, _Mapping]] = ..., failed: _Optional[_Union[TrainingFailed, _Mapping]] = ..., cancelled: _Optional[_Union[TrainingCancelled, _Mapping]] = ..., download: _Optional[_Union[DownloadProgress, _Mapping]] = ...) -> None: ...

class StateChanged(_message.Message):
    __slots__ = ("state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    reason: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class TrainingStarted(_message.Message):
    __slots__ = ("backend", "device", "model", "total_steps", "num_epochs", "train_rows", "eval_rows", "total_params", "trainable_params", "trainable_percent", "estimated_peak_memory_bytes", "output_dir", "resumed_from_step", "dtype", "dtype_reason", "packing", "packing_reason", "peak_tflops", "warnings", "world_size", "global_batch_size", "distributed_backend")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    PACKING_REASON_FIELD_NUMBER: _ClassVar[int]
    PEAK_TFLOPS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: str
    device: str
    model: str
    total_steps: int
    num_epochs: float
    train_rows: int
    eval_rows: int
    total_params: int
    trainable_params: int
    trainable_percent: float
    estimated_peak_memory_bytes: int
    output_dir: str
    resumed_from_step: int
    dtype: str
    dtype_reason: str
    packing: bool
    packing_reason: str
    peak_tflops: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    world_size: int
    global_batch_size: int
    distributed_backend: str
    def __init__(self, backend: _Optional[str] = ..., device: _Optional[str] = ..., model: _Optional[str] = ..., total_steps: _Optional[int] = ..., num_epochs: _Optional[float] = ..., train_rows: _Optional[int] = ..., eval_rows: _Optional[int] = ..., total_params: _Optional[int] = ..., trainable_params: _Optional[int] = ..., trainable_percent: _Optional[float] = ..., estimated_peak_memory_bytes: _Optional[int] = ..., output_dir: _Optional[str] = ..., resumed_from_step: _Optional[int] = ..., dtype: _Optional[str] = ..., dtype_reason: _Optional[str] = ..., packing: _Optional[bool] = ..., packing_reason: _Optional[str] = ..., peak_tflops: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ..., world_size: _Optional[int] = ..., global_batch_size: _Optional[int] = ..., distributed_backend: _Optional[str] = ...) -> None: ...

class LogMessage(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "trained_tokens", "peak_memory_bytes", "eta_seconds", "elapsed_seconds", "tflops", "mfu", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TFLOPS_FIELD_NUMBER: _ClassVar[int]
    MFU_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory_bytes: int
    eta_seconds: float
    elapsed_seconds: float
    tflops: float
    mfu: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., trained_tokens: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., tflops: _Optional[float] = ..., mfu: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvalMetrics(_message.Message):
    __slots__ = ("step", "epoch", "eval_loss", "perplexity", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: float
    eval_loss: float
    perplexity: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[float] = ..., eval_loss: _Optional[float] = ..., perplexity: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("step", "path", "is_best")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    IS_BEST_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    is_best: bool
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., is_best: _Optional[bool] = ...) -> None: ...

class TrainingFinished(_message.Message):
    __slots__ = ("adapter_path", "output_dir", "steps", "final_loss", "best_checkpoint", "best_metric", "peak_memory_bytes", "stopped_early")
    ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    BEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STOPPED_EARLY_FIELD_NUMBER: _ClassVar[int]
    adapter_path: str
    output_dir: str
    steps: int
    final_loss: float
    best_checkpoint: str
    best_metric: float
    peak_memory_bytes: int
    stopped_early: bool
    def __init__(self, adapter_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., steps: _Optional[int] = ..., final_loss: _Optional[float] = ..., best_checkpoint: _Optional[str] = ..., best_metric: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., stopped_early: _Optional[bool] = ...) -> None: ...

class TrainingFailed(_message.Message):
    __slots__ = ("reason", "step")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    reason: str
    step: int
    def __init__(self, reason: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class TrainingCancelled(_message.Message):
    __slots__ = ("step", "checkpoint")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    step: int
    checkpoint: str
    def __init__(self, step: _Optional[int] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("model", "adapter", "backend", "messages", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    backend: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., backend: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "adapter", "backend", "prompt", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    backend: str
    prompt: str
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., backend: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "time_to_first_token_seconds", "tokens_per_second", "queue_wait_seconds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_seconds: float
    tokens_per_second: float
    queue_wait_seconds: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., time_to_first_token_seconds: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., queue_wait_seconds: _Optional[float] = ...) -> None: ...

class ChatChunk(_message.Message):
    __slots__ = ("delta", "finish_reason", "usage", "download")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    delta: str
    finish_reason: str
    usage: Usage
    download: DownloadProgress
    def __init__(self, delta: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., download: _Optional[_Union[DownloadProgress, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "adapter", "backend", "data_path", "config_path", "max_generations", "job_id", "adapters", "compare_base", "sampling", "tokenizer", "predictions", "references", "split", "base_dir", "retain", "generate_batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    COMPARE_BASE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    RETAIN_FIELD_NUMBER: _ClassVar[int]
    GENERATE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    backend: str
    data_path: str
    config_path: str
    max_generations: int
    job_id: str
    adapters: _containers.RepeatedScalarFieldContainer[str]
    compare_base: bool
    sampling: SamplingParams
    tokenizer: str
    predictions: _containers.RepeatedScalarFieldContainer[str]
    references: _containers.RepeatedScalarFieldContainer[str]
    split: str
    base_dir: str
    retain: str
    generate_batch_size: int
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., backend: _Optional[str] = ..., data_path: _Optional[str] = ..., config_path: _Optional[str] = ..., max_generations: _Optional[int] = ..., job_id: _Optional[str] = ..., adapters: _Optional[_Iterable[str]] = ..., compare_base: _Optional[bool] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., tokenizer: _Optional[str] = ..., predictions: _Optional[_Iterable[str]] = ..., references: _Optional[_Iterable[str]] = ..., split: _Optional[str] = ..., base_dir: _Optional[str] = ..., retain: _Optional[str] = ..., generate_batch_size: _Optional[int] = ...) -> None: ...

class GenerationResult(_message.Message):
    __slots__ = ("row", "prompt", "reference", "prediction", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROW_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    row: int
    prompt: str
    reference: str
    prediction: str
    scores: _containers.ScalarMap[str, float]
    def __init__(self, row: _Optional[int] = ..., prompt: _Optional[str] = ..., reference: _Optional[str] = ..., prediction: _Optional[str] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluateRun(_message.Message):
    __slots__ = ("label", "adapter", "loss", "perplexity", "rows", "metrics", "deltas", "generations", "retain_generations")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DeltasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    RETAIN_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    label: str
    adapter: str
    loss: float
    perplexity: float
    rows: int
    metrics: _containers.ScalarMap[str, float]
    deltas: _containers.ScalarMap[str, float]
    generations: _containers.RepeatedCompositeFieldContainer[GenerationResult]
    retain_generations: _containers.RepeatedCompositeFieldContainer[GenerationResult]
    def __init__(self, label: _Optional[str] = ..., adapter: _Optional[str] = ..., loss: _Optional[float] = ..., perplexity: _Optional[float] = ..., rows: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., deltas: _Optional[_Mapping[str, float]] = ..., generations: _Optional[_Iterable[_Union[GenerationResult, _Mapping]]] = ..., retain_generations: _Optional[_Iterable[_Union[GenerationResult, _Mapping]]] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("run", "rows_done", "rows_total", "eta_seconds", "elapsed_seconds", "result")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    run: str
    rows_done: int
    rows_total: int
    eta_seconds: float
    elapsed_seconds: float
    result: EvaluateResponse
    def __init__(self, run: _Optional[str] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., result: _Optional[_Union[EvaluateResponse, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("loss", "perplexity", "rows", "metrics", "runs", "tokenizer", "split")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    loss: float
    perplexity: float
    rows: int
    metrics: _containers.ScalarMap[str, float]
    runs: _containers.RepeatedCompositeFieldContainer[EvaluateRun]
    tokenizer: str
    split: str
    def __init__(self, loss: _Optional[float] = ..., perplexity: _Optional[float] = ..., rows: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., runs: _Optional[_Iterable[_Union[EvaluateRun, _Mapping]]] = ..., tokenizer: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class InspectDataRequest(_message.Message):
    __slots__ = ("config_path", "data_path", "model", "overrides", "base_dir", "batch_size", "max_seq_length", "job_id")
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    config_path: str
    data_path: str
    model: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    base_dir: str
    batch_size: int
    max_seq_length: int
    job_id: str
    def __init__(self, config_path: _Optional[str] = ..., data_path: _Optional[str] = ..., model: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., base_dir: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class HistogramBucket(_message.Message):
    __slots__ = ("lo", "hi", "count")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    lo: int
    hi: int
    count: int
    def __init__(self, lo: _Optional[int] = ..., hi: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class TextSegment(_message.Message):
    __slots__ = ("text", "supervised")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUPERVISED_FIELD_NUMBER: _ClassVar[int]
    text: str
    supervised: bool
    def __init__(self, text: _Optional[str] = ..., supervised: _Optional[bool] = ...) -> None: ...

class RenderedExample(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[TextSegment]
    def __init__(self, segments: _Optional[_Iterable[_Union[TextSegment, _Mapping]]] = ...) -> None: ...

class DataReport(_message.Message):
    __slots__ = ("source", "format", "columns", "train_rows", "validation_rows", "template", "end_of_turn_token", "added_tokens", "max_seq_length", "batch_size", "tokens_total", "tokens_mean", "tokens_max", "prompt_tokens_total", "prompt_tokens_mean", "response_tokens_total", "response_tokens_mean", "length_histogram", "over_length_rows", "over_length_ids", "truncated_prompt_rows", "overlong_rows", "overlong_ids", "padding_waste_percent", "padding_waste_grouped_percent", "padding_waste_packed_percent", "examples", "warnings", "tokenizer", "row_errors", "row_error_count", "rejected_examples")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ADDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_MEAN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_MAX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_MEAN_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKENS_MEAN_FIELD_NUMBER: _ClassVar[int]
    LENGTH_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    OVER_LENGTH_ROWS_FIELD_NUMBER: _ClassVar[int]
    OVER_LENGTH_IDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_PROMPT_ROWS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_ROWS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_IDS_FIELD_NUMBER: _ClassVar[int]
    PADDING_WASTE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PADDING_WASTE_GROUPED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PADDING_WASTE_PACKED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    ROW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    ROW_ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    source: str
    format: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    train_rows: int
    validation_rows: int
    template: str
    end_of_turn_token: str
    added_tokens: _containers.RepeatedScalarFieldContainer[str]
    max_seq_length: int
    batch_size: int
    tokens_total: int
    tokens_mean: float
    tokens_max: int
    prompt_tokens_total: int
    prompt_tokens_mean: float
    response_tokens_total: int
    response_tokens_mean: float
    length_histogram: _containers.RepeatedCompositeFieldContainer[HistogramBucket]
    over_length_rows: int
    over_length_ids: _containers.RepeatedScalarFieldContainer[str]
    truncated_prompt_rows: int
    overlong_rows: int
    overlong_ids: _containers.RepeatedScalarFieldContainer[str]
    padding_waste_percent: float
    padding_waste_grouped_percent: float
    padding_waste_packed_percent: float
    examples: _containers.RepeatedCompositeFieldContainer[RenderedExample]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    tokenizer: str
    row_errors: _containers.RepeatedScalarFieldContainer[str]
    row_error_count: int
    rejected_examples: _containers.RepeatedCompositeFieldContainer[RenderedExample]
    def __init__(self, source: _Optional[str] = ..., format: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., train_rows: _Optional[int] = ..., validation_rows: _Optional[int] = ..., template: _Optional[str] = ..., end_of_turn_token: _Optional[str] = ..., added_tokens: _Optional[_Iterable[str]] = ..., max_seq_length: _Optional[int] = ..., batch_size: _Optional[int] = ..., tokens_total: _Optional[int] = ..., tokens_mean: _Optional[float] = ..., tokens_max: _Optional[int] = ..., prompt_tokens_total: _Optional[int] = ..., prompt_tokens_mean: _Optional[float] = ..., response_tokens_total: _Optional[int] = ..., response_tokens_mean: _Optional[float] = ..., length_histogram: _Optional[_Iterable[_Union[HistogramBucket, _Mapping]]] = ..., over_length_rows: _Optional[int] = ..., over_length_ids: _Optional[_Iterable[str]] = ..., truncated_prompt_rows: _Optional[int] = ..., overlong_rows: _Optional[int] = ..., overlong_ids: _Optional[_Iterable[str]] = ..., padding_waste_percent: _Optional[float] = ..., padding_waste_grouped_percent: _Optional[float] = ..., padding_waste_packed_percent: _Optional[float] = ..., examples: _Optional[_Iterable[_Union[RenderedExample, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., tokenizer: _Optional[str] = ..., row_errors: _Optional[_Iterable[str]] = ..., row_error_count: _Optional[int] = ..., rejected_examples: _Optional[_Iterable[_Union[RenderedExample, _Mapping]]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("model", "config_path", "train_rows", "data_path", "base_dir")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    model: str
    config_path: str
    train_rows: int
    data_path: str
    base_dir: str
    def __init__(self, model: _Optional[str] = ..., config_path: _Optional[str] = ..., train_rows: _Optional[int] = ..., data_path: _Optional[str] = ..., base_dir: _Optional[str] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("config", "reasons", "train_rows", "tokens_p50", "tokens_p95", "tokens_max", "config_yaml", "warnings")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_P50_FIELD_NUMBER: _ClassVar[int]
    TOKENS_P95_FIELD_NUMBER: _ClassVar[int]
    TOKENS_MAX_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    config: TrainingConfig
    reasons: _containers.RepeatedScalarFieldContainer[str]
    train_rows: int
    tokens_p50: int
    tokens_p95: int
    tokens_max: int
    config_yaml: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., train_rows: _Optional[int] = ..., tokens_p50: _Optional[int] = ..., tokens_p95: _Optional[int] = ..., tokens_max: _Optional[int] = ..., config_yaml: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("path", "job_id", "base_model", "peft_adapter", "lora_r", "created_at", "layouts", "exports")
    PATH_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PEFT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LORA_R_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    job_id: str
    base_model: str
    peft_adapter: str
    lora_r: int
    created_at: float
    layouts: _containers.RepeatedScalarFieldContainer[str]
    exports: _containers.RepeatedCompositeFieldContainer[ExportRecord]
    def __init__(self, path: _Optional[str] = ..., job_id: _Optional[str] = ..., base_model: _Optional[str] = ..., peft_adapter: _Optional[str] = ..., lora_r: _Optional[int] = ..., created_at: _Optional[float] = ..., layouts: _Optional[_Iterable[str]] = ..., exports: _Optional[_Iterable[_Union[ExportRecord, _Mapping]]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    def __init__(self, adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ...) -> None: ...

class ExportAdapterRequest(_message.Message):
    __slots__ = ("adapter", "out_dir", "layout", "force", "format", "quant", "out_file", "model", "name", "repo", "private", "fused", "gguf_quant")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    OUT_DIR_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    OUT_FILE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPO_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    GGUF_QUANT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    out_dir: str
    layout: str
    force: bool
    format: str
    quant: str
    out_file: str
    model: str
    name: str
    repo: str
    private: bool
    fused: bool
    gguf_quant: str
    def __init__(self, adapter: _Optional[str] = ..., out_dir: _Optional[str] = ..., layout: _Optional[str] = ..., force: _Optional[bool] = ..., format: _Optional[str] = ..., quant: _Optional[str] = ..., out_file: _Optional[str] = ..., model: _Optional[str] = ..., name: _Optional[str] = ..., repo: _Optional[str] = ..., private: _Optional[bool] = ..., fused: _Optional[bool] = ..., gguf_quant: _Optional[str] = ...) -> None: ...

class ExportAdapterResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ExportRecord(_message.Message):
    __slots__ = ("format", "target", "quant", "time", "size_bytes", "job_id", "layout")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    format: str
    target: str
    quant: str
    time: float
    size_bytes: int
    job_id: str
    layout: str
    def __init__(self, format: _Optional[str] = ..., target: _Optional[str] = ..., quant: _Optional[str] = ..., time: _Optional[float] = ..., size_bytes: _Optional[int] = ..., job_id: _Optional[str] = ..., layout: _Optional[str] = ...) -> None: ...

class ExportProgress(_message.Message):
    __slots__ = ("stage", "bytes_done", "bytes_total", "eta_seconds", "elapsed_seconds", "message", "done", "path", "record")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    stage: str
    bytes_done: int
    bytes_total: int
    eta_seconds: float
    elapsed_seconds: float
    message: str
    done: bool
    path: str
    record: ExportRecord
    def __init__(self, stage: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., message: _Optional[str] = ..., done: _Optional[bool] = ..., path: _Optional[str] = ..., record: _Optional[_Union[ExportRecord, _Mapping]] = ...) -> None: ...

class FuseAdapterRequest(_message.Message):
    __slots__ = ("adapter", "model", "out_dir", "dequantize", "force")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUT_DIR_FIELD_NUMBER: _ClassVar[int]
    DEQUANTIZE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    model: str
    out_dir: str
    dequantize: bool
    force: bool
    def __init__(self, adapter: _Optional[str] = ..., model: _Optional[str] = ..., out_dir: _Optional[str] = ..., dequantize: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class FuseAdapterResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...
