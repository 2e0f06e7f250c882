"""PipelineConfig: every knob of the pipeline in one dataclass (defaults < TOML file < CLI flags).

Both runners (local and Kubeflow) build the pipeline from this object alone. Paths inside
`home` are spelled in one place only, `Home` (pipeline/home/home.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional

import tomllib

from ctpipe.pipeline.errors import ConfigError

__all__ = ["ConfigError", "PipelineConfig"]


# Beam's DirectRunner defaults (in-memory, one worker) are what a small span wants, so the local
# runner passes *no* Beam arguments: any non-empty list without --extra_package/--setup_file/
# --requirements_file/--sdk_container_image makes TFX copy its whole package into a new temp folder
# and build an sdist for every Beam component (tfx/utils/dependency_utils.py): ~2.6 s and ~52 MB
# left behind per component, every cycle.
DIRECT_RUNNER_ARGS: List[str] = []
# `promotion` values; "auto" is the old name of "live".
PROMOTION_MODES = ("fresh_labels", "live", "auto", "both", "manual")



@dataclasses.dataclass
class PipelineConfig:
    # Identity and locations
    pipeline_name: str = "ctpipe"
    model_name: str = "big_tipper"
    data_root: str = "data/sample"
    home: str = "ctpipe-home"
    # The data contract: "" = the packaged schema/schema.pbtxt (ctpipe.schema); else a path
    # (any tf.io.gfile location every runner's steps can read).
    schema_path: str = ""
    # Which span this cycle processes (the runner sets it: the oldest pending span).
    span: Optional[int] = None
    # On a fresh home, the first span to process (default: the newest; older ones are history).
    from_span: Optional[int] = None
    # Failed or killed cycles of one span before it is quarantined with the last error.
    max_attempts: int = 3
    # Retention: large artifacts of cycles older than the last `keep_cycles` are removed
    # (their ML Metadata records stay); what the window, drift references, production model
    # and its warm-start parent need is never removed.
    keep_cycles: int = 5
    # `ctpipe watch` re-executes itself (same PID, same command line) after this many decisions
    # to bound the memory tf_keras keeps per training run; 0 = never.
    watch_restart_cycles: int = 25
    # Splitting of each span (hash buckets train:eval); eval is the Evaluator's data.
    train_buckets: int = 2
    eval_buckets: int = 1
    # Data gate and training window
    window_spans: int = 3
    # ... extended with older accepted spans while the window holds fewer training rows than
    # this (tiny spans would otherwise leave a few hundred rows to train on); 0 = spans only.
    window_min_rows: int = 2000
    # Poisoned labels: the production model's AUC on the new span may fall at most this far
    # below its AUC on the window's eval data; checked when the span has this many eval rows.
    label_check_max_drop: float = 0.15
    label_check_min_rows: int = 50
    # Trainer
    # Step budget = epochs over the whole window (fewer epochs from a warm start), at least
    # min_steps; early stopping on the eval loss ends it sooner; max_steps is a safety cap.
    epochs: int = 6
    warm_start_epochs: int = 2
    min_steps: int = 200
    max_steps: int = 20_000
    batch_size: int = 64
    # Batches grow past batch_size so an epoch takes at most this many steps (0: never grow).
    max_steps_per_epoch: int = 1000
    learning_rate: float = 3e-3
    warm_start: bool = True
    seed: int = 7
    # Evaluator thresholds. Value thresholds hold on the first run (no baseline yet);
    # the change threshold is a tolerance vs stable (the production model) on the same eval split.
    min_auc: float = 0.70
    max_auc_drop: float = 0.02
    min_eval_examples: int = 50
    # Release (components/release.py): each new version goes on trial as `canary` in
    # <home>/serving/models.config (README "Release"). Who promotes it:
    #   "fresh_labels"  the next accepted span's labels: every live version is scored on it
    #                   before training; a canary not worse than stable by more than the noise
    #                   tolerance is promoted, a clearly worse one retired (pipeline/ops/
    #                   fresh_labels.py) - champion/challenger without traffic;
    #   "live" ("auto") `ctpipe guard`/`watch` on live canary traffic;
    #   "both"          fresh labels retire; promotion needs fresh labels AND the live guard;
    #   "manual"        only `ctpipe promote` (fresh-span numbers are still recorded).
    promotion: str = "fresh_labels"
    # Fresh-span decisions need this many eval rows: the count at which the tolerance
    # max(0.005, 1.96 * sqrt(se_stable^2 + se_canary^2)) falls to 0.10 AUC at the sample's
    # AUC ~0.85 and ~20% positives (components/label_check.py `min_rows_for`).
    fresh_min_rows: int = 243
    # A running server's REST address (e.g. http://127.0.0.1:8501): the Pusher waits until the
    # new version is AVAILABLE there before it moves a label. "" = do not wait.
    serving_rest: str = ""
    # Beam: DirectRunner in-memory is fastest for small spans; Kubeflow overrides these.
    beam_pipeline_args: List[str] = dataclasses.field(
        default_factory=lambda: list(DIRECT_RUNNER_ARGS))
    # Kubeflow (see kubeflow/ and kubeflow/environments/*.toml)
    image: str = "ghcr.io/example/ctpipe:0.1.0"
    kfp_pipeline_root: str = "gs://example-bucket/ctpipe/pipeline_root"
    kfp_data_root: str = "gs://example-bucket/ctpipe/data"
    # Where the Pusher publishes on the cluster: object storage (gs://..., s3://...; TF Serving
    # reads it natively) or a path on the models PVC, mounted into the Pusher at
    # kfp_models_mount (the PVC serving/k8s mounts read-only).
    kfp_serving_dir: str = "/models/big_tipper"
    kfp_models_pvc: str = "ctpipe-models"
    # TF Serving's REST service in the cluster (serving/k8s): the Pusher waits for a new
    # version to be AVAILABLE there before it names it canary.
    kfp_serving_rest: str = "http://tf-serving:8501"
    kfp_models_mount: str = "/models"
    # KFP's ML Metadata (our resolver and span-selection steps query it).
    kfp_mlmd_host: str = "metadata-grpc-service.kubeflow"
    kfp_mlmd_port: int = 8080
    # Beam on the cluster: DirectRunner across the pod's cores unless an environment file says
    # otherwise (Flink/Spark via the portable runner, or Dataflow).
    kfp_beam_pipeline_args: List[str] = dataclasses.field(default_factory=lambda: [
        "--direct_running_mode=multi_processing", "--direct_num_workers=0"])
    trainer_gpus: int = 1
    # The Trainer's GPU: on open-source KFP the Kubernetes extended resource name (used verbatim
    # as the limit's name by the driver); on Vertex AI its accelerator enum.
    kfp_gpu_resource: str = "nvidia.com/gpu"
    gpu_type: str = "NVIDIA_TESLA_T4"  # Vertex AI only
    trainer_cpu: float = 4.0
    trainer_memory_gb: float = 16.0
    evaluator_cpu: float = 4.0
    evaluator_memory_gb: float = 8.0
    beam_cpu: float = 2.0
    beam_memory_gb: float = 8.0

    def with_absolute_paths(self) -> "PipelineConfig":
        """The same config with `home` and `data_root` absolute: what runners and operator
        commands work with, so a later chdir (TFX, Beam) cannot move them."""
        return dataclasses.replace(self, home=os.path.abspath(self.home),
                                   data_root=os.path.abspath(self.data_root))

    @property
    def promotes_on_fresh_labels(self) -> bool:
        return self.promotion in ("fresh_labels", "both")

    @property
    def promotes_on_live_traffic(self) -> bool:
        return self.promotion in ("live", "auto", "both")

    def trainer_hparams(self) -> Dict[str, Any]:
        return {"epochs": self.epochs, "warm_start_epochs": self.warm_start_epochs,
                "batch_size": self.batch_size, "max_steps_per_epoch": self.max_steps_per_epoch,
                "min_steps": self.min_steps, "max_steps": self.max_steps,
                "learning_rate": self.learning_rate, "warm_start": self.warm_start,
                "seed": self.seed}

    def validate(self) -> "PipelineConfig":
        positive = ("train_buckets", "eval_buckets", "window_spans", "epochs", "warm_start_epochs",
                    "batch_size",
                    "min_steps", "max_steps", "max_attempts", "keep_cycles",
                    "min_eval_examples", "trainer_gpus")
        for name in positive:
            if getattr(self, name) < (0 if name == "trainer_gpus" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.min_auc <= 1.0:
            raise ConfigError(f"min_auc must be within [0, 1], got {self.min_auc}")
        if self.max_steps_per_epoch < 0:
            raise ConfigError("max_steps_per_epoch must be >= 0 (0 = batches never grow), got "
                              f"{self.max_steps_per_epoch}")
        if self.watch_restart_cycles < 0:
            raise ConfigError("watch_restart_cycles must be >= 0 (0 = never), got "
                              f"{self.watch_restart_cycles}")
        if self.window_min_rows < 0:
            raise ConfigError(f"window_min_rows must be >= 0, got {self.window_min_rows}")
        if self.promotion not in PROMOTION_MODES:
            raise ConfigError(f"promotion must be one of {', '.join(PROMOTION_MODES)}, "
                              f"got {self.promotion!r}")
        if self.fresh_min_rows < 1:
            raise ConfigError(f"fresh_min_rows must be positive, got {self.fresh_min_rows}")
        if self.max_auc_drop < 0:
            raise ConfigError(f"max_auc_drop must be >= 0, got {self.max_auc_drop}")
        for name in ("span", "from_span"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_check_max_drop <= 1.0:
            raise ConfigError("label_check_max_drop must be within [0, 1], got "
                              f"{self.label_check_max_drop}")
        return self

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, toml_path: Optional[str] = None,
                     overrides: Optional[Mapping[str, Any]] = None) -> "PipelineConfig":
        values: Dict[str, Any] = {}
        if toml_path:
            try:
                with open(toml_path, "rb") as handle:
                    values.update(tomllib.load(handle))
            except OSError as error:
                raise ConfigError(f"cannot read config file {toml_path}: {error.strerror}")
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"config file {toml_path} is not valid TOML: {error}")
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        config = cls()
        for name, value in values.items():
            default = getattr(config, name)
            expected = type(default) if default is not None else int
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(
                    f"config key {name} must be {expected.__name__}, got {value!r}")
            setattr(config, name, value)
        return config.validate()
