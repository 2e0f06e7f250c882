"""TF Serving's model config file (ModelServerConfig, text format) - read and written with the
real tensorflow_serving proto, so the same file works for `ctpipe serve` and for TF Serving's
--model_config_file (see serving/k8s/base/models.config)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ctpipe.serving.errors import ServingError


@dataclasses.dataclass
class ModelSpecConfig:
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    latest_versions: int = 1
    specific_versions: Sequence[int] = ()
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)

    def wanted_versions(self, on_disk: List[int]) -> List[int]:
        if self.policy == "all":
            return list(on_disk)
        if self.policy == "specific":
            return [v for v in on_disk if v in set(self.specific_versions)]
        return sorted(on_disk)[-self.latest_versions:] if on_disk else []


def parse_models(text: str) -> List[ModelSpecConfig]:
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        # TF Serving's words (protobuf's text parser, which ParseProtoTextFile uses)
        raise ServingError("INVALID_ARGUMENT", "Error parsing text-format "
                           f"tensorflow.serving.ModelServerConfig: {error}")
    return from_proto(config)


def from_proto(config: "model_server_config_pb2.ModelServerConfig") -> List[ModelSpecConfig]:
    if not config.HasField("model_config_list"):
        raise ServingError("INVALID_ARGUMENT", "model config has no model_config_list")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ServingError("INVALID_ARGUMENT", "every model needs a name and a base_path")
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        spec = ModelSpecConfig(name=entry.name, base_path=entry.base_path, policy=policy,
                               labels=dict(entry.version_labels))
        if policy == "latest":
            spec.latest_versions = entry.model_version_policy.latest.num_versions or 1
        elif policy == "specific":
            spec.specific_versions = tuple(entry.model_version_policy.specific.versions)
        models.append(spec)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ServingError("INVALID_ARGUMENT", "model names in the config must be unique")
    return models


def single_model(name: str, base_path: str) -> List[ModelSpecConfig]:
    """What TF Serving does with --model_name/--model_base_path: latest version only."""
    return [ModelSpecConfig(name=name, base_path=base_path)]


def to_text(models: List[ModelSpecConfig], platform: Optional[str] = "tensorflow") -> str:
    config = model_server_config_pb2.ModelServerConfig()
    for spec in models:
        entry = config.model_config_list.config.add(name=spec.name, base_path=spec.base_path,
                                                    model_platform=platform)
        if spec.policy == "all":
            entry.model_version_policy.all.SetInParent()
        elif spec.policy == "specific":
            entry.model_version_policy.specific.versions.extend(spec.specific_versions)
        else:
            entry.model_version_policy.latest.num_versions = spec.latest_versions
        for label, version in spec.labels.items():
            entry.version_labels[label] = version
    return text_format.MessageToString(config)
