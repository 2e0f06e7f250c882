"""The container entrypoint of every TFX step on open-source KFP: TFX's own, minus phantom inputs.

    python -m ctpipe.kubeflow.entrypoint --executor_class_path ... \
        --json_serialized_invocation_args '{{$}}' ...   (the arguments TFX compiled, unchanged)

Why: our resolver steps (ctpipe.kubeflow.steps resolve) can find nothing, e.g. no blessed model
on the first run. KFP cannot express "no artifact":
  - the launcher records every declared output artifact, listed in ExecutorOutput or not
    (kubeflow/pipelines backend/src/v2/component/launcher_v2.go, uploadOutputArtifacts, 2.5.0
    and 2.17.0), so an empty result becomes an empty-folder artifact;
  - the driver resolves every artifact input and ignores `isOptional` for artifacts
    (backend/src/v2/driver/driver.go resolveInputs at 2.5.0; driver/resolve.go at 2.17.0), so
    the consumer always receives it.
TFX's Evaluator sets `has_baseline = bool(input_dict.get('baseline_model'))` and the Trainer
warm-starts from any `base_model`, so a phantom would be loaded as a model. A resolver that
finds nothing therefore writes the explicit marker NONE_KEY into the artifact's metadata (the
launcher merges it: mergeRuntimeArtifacts), and this entrypoint removes marked artifacts from
the ExecutorInput before TFX's kubeflow_v2_run_executor sees it: the executor gets no input,
exactly as under TFX's own orchestrators.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

NONE_KEY = "ctpipe_none"  # artifact metadata: 1.0 = "the resolver found nothing"
INVOCATION_FLAG = "--json_serialized_invocation_args"
TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
MODULE = "ctpipe.kubeflow.entrypoint"


def is_none_marker(artifact: Dict[str, Any]) -> bool:
    return bool((artifact.get("metadata") or {}).get(NONE_KEY))


def strip_none_markers(executor_input: Dict[str, Any]) -> Dict[str, Any]:
    """The ExecutorInput without marked artifacts; an input left empty is dropped, as TFX's
    own orchestrators leave a resolver input that resolved nothing out of input_dict."""
    artifacts = executor_input.get("inputs", {}).get("artifacts", {})
    for key in list(artifacts):
        kept = [a for a in artifacts[key].get("artifacts", []) if not is_none_marker(a)]
        if kept:
            artifacts[key]["artifacts"] = kept
        else:
            del artifacts[key]
    return executor_input


def rewrite_argv(argv: List[str]) -> List[str]:
    """argv with the invocation JSON (`--flag VALUE` or `--flag=VALUE`) stripped of markers."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == INVOCATION_FLAG and index + 1 < len(out):
            out[index + 1] = json.dumps(strip_none_markers(json.loads(out[index + 1])))
        elif arg.startswith(INVOCATION_FLAG + "="):
            value = arg[len(INVOCATION_FLAG) + 1:]
            out[index] = f"{INVOCATION_FLAG}={json.dumps(strip_none_markers(json.loads(value)))}"
    return out


def main() -> None:
    from absl import app
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry

    # TFX's entrypoint parses sys.argv itself (argv[0] stays among the Beam args, as before).
    sys.argv = [sys.argv[0]] + rewrite_argv(sys.argv[1:])
    app.run(tfx_entry.main, flags_parser=tfx_entry._parse_flags)  # noqa: SLF001 - its own parser


if __name__ == "__main__":
    main()
