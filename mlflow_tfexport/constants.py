"""Names shared by the flavor, the registry and the runtimes, in one place."""

from __future__ import annotations

FLAVOR_NAME = "tfexport"
PACKAGE = "mlflow_tfexport"
#: The pyfunc ``loader_module`` of every tfexport model.
SERVING_MODULE = "mlflow_tfexport.serving.pyfunc"
#: What a saved model's ``code/mlflow_tfexport`` holds (relative to the package): the serving tree and the
#: shared modules it imports. Nothing of export, validation, registry, CLI or worker.
SERVING_COPY = ("constants.py", "errors.py", "_lazy.py", "_compat.py", "tasks.py", "formats.py", "serving")

# Files and folders inside a saved model directory.
MODEL_DIR = "model"  # transformers weights (safetensors) + config
TOKENIZER_DIR = "tokenizer"  # tokenizer.json + tokenizer_config.json
IMAGE_PROCESSOR_DIR = "image_processor"  # preprocessor_config.json (image models)
MLMODEL_FILE = "MLmodel"
TOKENIZER_FILE = "tokenizer.json"  # inside TOKENIZER_DIR: what the serving tokenizer loads
CODE_DIR = "code"  # this package's runtime code, so serving needs no pip install of it
ONNX_FILE = "model.onnx"
#: Metadata key of a with-past graph whose attention kernel takes a multi-token step over a past for one row at a
#: time (GroupQueryAttention); the serving runner then runs such a step row by row. Value: the kernel's name.
ONNX_META_ROW_CHUNKS = "tfexport.multi_token_past_per_row"
ONNX_ENCODER_FILE = "encoder.onnx"
ONNX_DECODER_FILE = "decoder.onnx"
VALIDATION_FILE = "validation.json"


class Format:
    """Values of ``FlavorKey.FORMAT`` and of the ``tfexport.format`` tag."""

    TRANSFORMERS = "transformers"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    NEURON = "neuron"


class Generation:
    """Values of ``FlavorKey.GENERATION``: how an exported generation model is laid out."""

    DECODER_WITH_PAST = "decoder-with-past"  # one graph: ids, mask, past key/values -> logits, presents
    ENCODER_DECODER = "encoder-decoder"  # encoder graph (+ cross-attention caches) and decoder-with-past graph
    #: static shapes: an encoder per bucket, a cache-free decoder per bucket and decoder length
    STATIC_ENCODER_DECODER = "static-encoder-decoder"


class FlavorKey:
    """Keys of the ``tfexport`` block in MLmodel."""

    CODE = "code"  # MLflow's own key: the folder of code the model carries (CODE_DIR)
    FORMAT = "format"
    TASK = "task"
    MODEL_FILE = "model_file"
    TOKENIZER_DIR = "tokenizer_dir"
    INPUT_NAMES = "input_names"
    OUTPUT_NAMES = "output_names"
    ID2LABEL = "id2label"
    MAX_LENGTH = "max_length"
    PAD_TOKEN_ID = "pad_token_id"
    EOS_TOKEN_ID = "eos_token_id"
    MASK_TOKEN_ID = "mask_token_id"
    MODEL_TYPE = "model_type"
    ARCHITECTURE = "architecture"
    PROBLEM_TYPE = "problem_type"
    TRACE_SHAPES = "trace_shapes"
    TRACE_DEVICE = "trace_device"  # TorchScript: "cpu" or "cuda", the device type the trace runs on
    OPSET = "opset"
    OPTIMIZED = "optimized"  # ONNX: what onnxruntime's transformer optimizer fused (as in tfexport.optimized)
    QUANTIZED = "quantized"  # ONNX: "int8" for dynamic int8 quantisation
    NEURON_TARGET = "neuron_target"
    #: Every batch's sequence is padded to a multiple of this before the model runs (Longformer's window).
    PAD_TO_MULTIPLE_OF = "pad_to_multiple_of"
    TRANSFORMERS_VERSION = "transformers_version"
    TORCH_VERSION = "torch_version"
    # Generation variants exported with past key values (see export/onnx_generation.py).
    GENERATION = "generation"  # a Generation value; absent: a single logits-only graph
    ENCODER_FILE = "encoder_file"  # encoder-decoder: the encoder graph beside the decoder (model_file)
    DECODER_START_TOKEN_ID = "decoder_start_token_id"
    DECODER_LENGTHS = "decoder_lengths"  # static encoder-decoder: the decoder lengths traced per bucket
    FORCED_BOS_TOKEN_ID = "forced_bos_token_id"
    FORCED_EOS_TOKEN_ID = "forced_eos_token_id"
    IMAGE_PROCESSOR_DIR = "image_processor_dir"
    IMAGE_SIZE = "image_size"  # [height, width] of the pixels the model was exported with
    NUM_CHANNELS = "num_channels"
    IMAGE_PREPROCESSING = "image_preprocessing"  # what the saved image processor does, for people
    # ONNX int8: how the graph was quantised ({"mode", "per_channel", "op_types", "reduce_range", "quantized_nodes",
    # and for int8-static "calibration"}), and the ONNX version whose fp32 graph was quantised, if any.
    QUANTIZATION = "quantization"
    QUANTIZED_FROM = "quantized_from"
    #: A user-written export config (``ExportConfig.to_dict()``): inputs with their feeds, outputs, opset, atol,
    #: post-processing. Data, read by the exporter and the serving code; never code.
    EXPORT_CONFIG = "export_config"
    #: ``module:QualName`` of a source model's class outside transformers (its code travels in ``code/``).
    MODEL_CLASS = "model_class"


class Tag:
    """Registry tags (model version tags) written by this package."""

    PREFIX = "tfexport."
    FORMAT = "tfexport.format"
    TASK = "tfexport.task"
    OPSET = "tfexport.opset"
    TRACE_SHAPE = "tfexport.trace_shape"
    TRACE_DEVICE = "tfexport.trace_device"
    DECODER_LENGTHS = "tfexport.decoder_lengths"  # static encoder-decoder: decoder lengths traced, "32,64"
    VALIDATED_SHAPE = "tfexport.validated_shape"
    ATOL = "tfexport.atol"
    MAX_ABS_DIFF = "tfexport.max_abs_diff"
    VALIDATION = "tfexport.validation"
    #: One line: what the version was gated on and the measured value, e.g.
    #: ``passed: label_agreement 0.988 >= 0.98 on 332 rows`` (quantised) or
    #: ``passed: max abs diff 2.1e-06 <= atol 0.0001``.
    GATE = "tfexport.gate"
    SOURCE = "tfexport.source"
    EXPORT_KEY = "tfexport.export_key"
    EXPORTER = "tfexport.exporter"
    EXPORT_SECONDS = "tfexport.export_seconds"
    VERSIONS = "tfexport.versions"
    COMPILER_VERSION = "tfexport.compiler_version"
    COMPILER_ARGS = "tfexport.compiler_args"
    NEURON_TARGET = "tfexport.neuron_target"
    OPTIMIZED = "tfexport.optimized"
    QUANTIZED = "tfexport.quantized"
    LABEL_AGREEMENT = "tfexport.label_agreement"
    MIN_AGREEMENT = "tfexport.min_agreement"
    BENCH_P50_MS = "tfexport.bench.p50_ms"
    BENCH_P99_MS = "tfexport.bench.p99_ms"
    BENCH_BATCH = "tfexport.bench.batch"
    BENCH_SEQ_LEN = "tfexport.bench.seq_len"
    BENCH_ITERATIONS = "tfexport.bench.iterations"
    BENCH_MACHINE = "tfexport.bench.machine"
    REQUEST = "tfexport.request"
    REQUEST_STATUS = "tfexport.request.status"
    SOURCE_RUN_ID = "tfexport.source_run_id"  # run tag of an export run: the source version's run
    #: Validation data of a worker request: a local path on the worker, or an artifact URI (runs:/..., s3://...).
    REQUEST_DATA = "tfexport.request.data"
    #: Starts of the current request ("<n> <request>"): a request that stopped its worker too often fails.
    REQUEST_ATTEMPTS = "tfexport.request.attempts"
    REQUEST_HANDLED = "tfexport.request.handled"  # the request value the status answers (set by the worker)
    # Who runs an export (run tags) or a worker job (version tags), so that a later process can tell a dead one.
    EXPORT_HOST = "tfexport.export_host"  # socket.gethostname() of the exporting process
    EXPORT_PID = "tfexport.export_pid"  # its os.getpid()
    EXPORT_PROCESS = "tfexport.export_process"  # "start=<ticks since boot>;pidns=<id>": tells a reused pid apart
    EXPORT_ABANDONED = "tfexport.export_abandoned"  # run tag: why a RUNNING export run of a dead process was failed
    REQUEST_HEARTBEAT = "tfexport.request.heartbeat"  # version tag: unix time the running worker last said it lives
    # Task-level validation on real data (the served answers of the variant against the source's).
    DATA_ROWS = "tfexport.data_rows"  # rows of the validation data ("0": synthetic inputs only)
    DATA_DIGEST = "tfexport.data_digest"  # digest of the validation data's request columns
    DATA_ORIGIN = "tfexport.data_origin"  # where the rows came from: a file name, "input example", "synthetic only"
    AGREEMENT_METRIC = "tfexport.agreement_metric"  # the task's metric, e.g. "label_agreement", "min_cosine"
    AGREEMENT = "tfexport.agreement"  # its value on the validation data
    AGREEMENT_THRESHOLD = "tfexport.agreement_threshold"  # the value the validation required
    # ONNX int8 (tfexport.quantized is the mode): the quantisation options that applied.
    QUANTIZE_PER_CHANNEL = "tfexport.quantize.per_channel"  # "true": weight scales per output channel
    QUANTIZE_OP_TYPES = "tfexport.quantize.op_types"  # operator types asked for, e.g. "MatMul,Attention"
    QUANTIZE_REDUCE_RANGE = "tfexport.quantize.reduce_range"  # "true": 7-bit weights
    QUANTIZE_CALIBRATION = "tfexport.quantize.calibration"  # int8-static: method and rows calibrated on
    QUANTIZED_FROM = "tfexport.quantized_from"  # the ONNX version whose fp32 graph was quantised
    # Guarded aliases (see registry/policy.py, registry/history.py). Registered model tags, edited in the UI:
    POLICY_PREFIX = "tfexport.policy."  # + "guarded", or "<alias>.<setting>": the promotion policy
    # Registered model tags written by promote/rollback and the worker's alias guard:
    ACCEPTED_PREFIX = "tfexport.accepted."  # + alias (or sha256:<digest> of a long one): signed accepted version (JSON)
    HISTORY_PREFIX = "tfexport.history."  # + sortable time key: one recorded alias change (JSON)
    # Model version tag written when a promotion onto this version was refused:
    REFUSED_PREFIX = "tfexport.refused."  # + alias: when, why, and where the alias went back to
    #: Model version tag: HMAC of the validation tags by a holder of the worker's secret (see registry/attest.py).
    ATTESTATION = "tfexport.attestation"


VALIDATION_PASSED = "passed"
VALIDATION_FAILED = "failed"  # written by ``mlflow-tfexport validate --tag`` when a re-validation fails
#: The artifact name an export logs its variant under (``Model.log(name=...)``), like ``log_model``'s default.
LOGGED_MODEL_NAME = "model"
#: The entry-point group through which packages register export configs per ``model_type``.
EXPORT_CONFIG_ENTRY_POINTS = "mlflow_tfexport.export_configs"

#: A file path: a batching pyfunc writes its run counters there (JSON: runs, calls, rows, lone_runs; at most
#: every ``BATCH_STATS_INTERVAL_S``), for benchmarks/serve_load.py's rows per run of a server process.
BATCH_STATS_ENV = "MLFLOW_TFEXPORT_BATCH_STATS"
BATCH_STATS_INTERVAL_S = 0.2
#: Seconds without a call that found company (another call in flight, a run going, calls waiting) before a call
#: of a model may run lone again, on every core (serving/batching.py, serving/runtimes/lanes.py).
LONE_AFTER_QUIET_S = 1.0
