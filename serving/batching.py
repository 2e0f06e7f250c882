"""Server-side batching, as TF Serving's `--enable_batching` / `--batching_parameters_file`.

Off by default, as in TF Serving. On, each (model, version, signature) gets a `Batcher`: Predict
requests arriving together are concatenated along dimension 0, run as one signature call, and
the outputs are split back per request - fewer, larger calls, which is where a small model's
time goes under concurrency (per-call Python and TF dispatch).

The knobs and their meaning are TF Serving 2.16.1's BatchingParameters
(servables/tensorflow/session_bundle_config.proto) and BasicBatchScheduler
(tensorflow/core/kernels/batching_util/basic_batch_scheduler.h):
  max_batch_size         rows in one batch at most (default 1000)
  batch_timeout_micros   how long a batch waits to fill once its first task arrived (default 0:
                         run as soon as a batch thread is free; tasks arriving meanwhile join)
  num_batch_threads      batches run concurrently (default: port::MaxParallelism(), the CPUs
                         this process may run on - serving/cpus.py)
  max_enqueued_batches   batches waiting at most; one more task that needs a new batch fails
                         with UNAVAILABLE "The batch scheduling queue to which this task was
                         submitted is full" (default 10)
  allowed_batch_sizes, pad_variable_length_inputs, thread_pool_name: parsed and checked as TF
  Serving checks them; padding is not applied (our signatures take any batch size, so padding
  would only add work).
  enable_large_batch_splitting: a request larger than max_batch_size runs on its own instead of
  failing with TF Serving's INVALID_ARGUMENT "Task size N is larger than maximum input batch
  size M".

The file is a text-format BatchingParameters; tensorflow-serving-api ships no
session_bundle_config_pb2, so the message is declared here from the same .proto fields (field
numbers and wrapper types), and google.protobuf's text_format parses it - the same syntax and
the same errors as TF Serving's ParseProtoTextFile.

Only requests whose every input has a batch dimension are batched, and only with requests of
the same input dtypes and inner shapes; any other request (scalars, inputs of different first
dimensions) runs directly, as without batching. Classify, Regress and MultiInference are not
batched here.

Two batchers per signature: `Batcher` for requests that arrive as values (REST, and gRPC inputs
the proto path refuses), concatenated as numpy; `ProtoBatcher` for gRPC Predict requests whose
TensorProtos have the signature's dtypes, parsed and concatenated inside TensorFlow
(serving/proto_calls.py). The two never share a batch.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from ctpipe.serving.cpus import schedulable_cpus
from ctpipe.serving.errors import ServingConfigError, ServingError

IDLE_SECONDS = 30.0  # a batch thread with nothing to do this long ends (restarted on demand)
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"

_MESSAGE = None


def _batching_parameters_class():
    """BatchingParameters, declared from session_bundle_config.proto (TF Serving 2.16.1)."""
    global _MESSAGE
    if _MESSAGE is not None:
        return _MESSAGE
    try:  # a tensorflow-serving-api that ships it
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        _MESSAGE = session_bundle_config_pb2.BatchingParameters
        return _MESSAGE
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="ctpipe/tensorflow_serving/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in (
            ("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
            ("num_batch_threads", 3, "Int64Value"), ("max_enqueued_batches", 4, "Int64Value"),
            ("allowed_batch_sizes", 6, None), ("pad_variable_length_inputs", 7, "bool"),
            ("thread_pool_name", 8, "StringValue"),
            ("enable_large_batch_splitting", 9, "BoolValue"),
            ("max_execution_batch_size", 10, "Int64Value")):
        field = message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL)
        if kind is None:
            field.label, field.type = F.LABEL_REPEATED, F.TYPE_INT64
        elif kind == "bool":
            field.type = F.TYPE_BOOL
        else:
            field.type, field.type_name = F.TYPE_MESSAGE, f".google.protobuf.{kind}"
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    _MESSAGE = message_factory.GetMessageClass(descriptor)
    return _MESSAGE


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """BasicBatchScheduler::Options' defaults, overridden by the fields a file sets."""
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = dataclasses.field(default_factory=schedulable_cpus)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: Tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False


def parse_batching_parameters(text: str, where: str = "batching parameters") -> BatchingOptions:
    """A text-format BatchingParameters -> BatchingOptions; ServingConfigError (one line) when
    the text does not parse or a value is out of range (TF Serving's checks)."""
    from google.protobuf import text_format

    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ServingConfigError(f"{where}: not a BatchingParameters text proto: {error}")
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                 "max_enqueued_batches"):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    if message.HasField("enable_large_batch_splitting"):
        values["enable_large_batch_splitting"] = message.enable_large_batch_splitting.value
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    options = BatchingOptions(**values)
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if getattr(options, name) <= 0:
            raise ServingConfigError(f"{where}: {name} must be positive, got "
                                     f"{getattr(options, name)}")
    if options.batch_timeout_micros < 0:
        raise ServingConfigError(f"{where}: batch_timeout_micros must be non-negative, got "
                                 f"{options.batch_timeout_micros}")
    sizes = options.allowed_batch_sizes
    if sizes:  # batching_session.cc / bundle_factory_util.cc ValidateAllowedBatchSizes
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
            raise ServingConfigError(f"{where}: allowed_batch_sizes entries must be positive "
                                     "and monotonically increasing")
        if sizes[-1] != options.max_batch_size:
            raise ServingConfigError(f"{where}: Last entry in allowed_batch_sizes must match "
                                     "max_batch_size; last entry was "
                                     f"{sizes[-1]}; expected {options.max_batch_size}")
    return options


def read_batching_parameters(path: Optional[str]) -> BatchingOptions:
    """--batching_parameters_file; without one, TF Serving's defaults."""
    if not path:
        return BatchingOptions()
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ServingConfigError(f"cannot read batching parameters file {path}: "
                                 f"{error.strerror or error}")
    return parse_batching_parameters(text, path)


# -- the scheduler --------------------------------------------------------------------------
class _Task:
    __slots__ = ("inputs", "rows", "done", "outputs", "error")

    def __init__(self, inputs, rows):
        self.inputs, self.rows = inputs, rows
        self.done = threading.Event()
        self.outputs: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[BaseException] = None


class _Batch:
    __slots__ = ("key", "tasks", "rows", "created")

    def __init__(self, key, created):
        self.key, self.tasks, self.rows, self.created = key, [], 0, created


def batch_key(tensors) -> Optional[Tuple[Tuple, int]]:
    """((alias, dtype, inner shape)..., rows) when every input has the same first dimension,
    else None (not batchable)."""
    rows, key = None, []
    for alias in sorted(tensors):
        shape = tuple(tensors[alias].shape)
        if not shape or shape[0] is None:
            return None
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            return None
        key.append((alias, tensors[alias].dtype, shape[1:]))
    if not rows:
        return None
    return tuple(key), rows


class Batcher:
    """BasicBatchScheduler for one (model, version, signature): `run(tensors)` is the signature
    call (a dict of tensors -> a dict of tensors); `submit` blocks until its rows come back."""

    def __init__(self, run: Optional[Callable[[Dict[str, object]], Dict[str, object]]],
                 options: BatchingOptions, name: str = ""):
        self._run, self.options, self.name = run, options, name
        self._cond = threading.Condition()
        self._queue: Deque[_Batch] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._closed = False
        self.batches_run = 0  # signature calls made (tests and metrics)
        self.tasks_run = 0

    def submit(self, tensors) -> Dict[str, np.ndarray]:
        keyed = batch_key(tensors)
        if keyed is None:
            return _numpy(self._run(tensors))
        key, rows = keyed
        return self.submit_task(tensors, key, rows, lambda: _numpy(self._run(tensors)))

    def submit_task(self, inputs, key, rows: int,
                    run_alone: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """Queue one request (`inputs`: whatever _merged_outputs merges) of `rows` rows with
        the open batches of the same `key`; blocks until its rows come back. A request larger
        than max_batch_size is refused as TF Serving does, or runs alone (run_alone) with
        enable_large_batch_splitting."""
        options = self.options
        if rows > options.max_batch_size:
            if not options.enable_large_batch_splitting:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Task size {rows} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
            return run_alone()
        task = _Task(inputs, rows)
        with self._cond:
            if len(self._threads) < options.num_batch_threads:
                self._start()
            target = None
            for batch in self._queue:  # open batches not yet taken by a thread
                if batch.key == key and batch.rows + rows <= options.max_batch_size:
                    target = batch
                    break
            if target is None:
                if len(self._queue) >= options.max_enqueued_batches:
                    raise ServingError("UNAVAILABLE", QUEUE_FULL)
                target = _Batch(key, time.monotonic())
                self._queue.append(target)
            target.tasks.append(task)
            target.rows += rows
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _start(self) -> None:
        """Batch threads up to num_batch_threads (under the lock). Threads idle for
        IDLE_SECONDS end, so an unloaded version's batcher leaves no thread behind."""
        while len(self._threads) < self.options.num_batch_threads:
            thread = threading.Thread(target=self._loop, daemon=True,
                                      name=f"batch-{self.name}-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def _next(self) -> Optional[_Batch]:
        """The first batch that is full or whose timeout passed; waits otherwise. None: this
        thread ends (closed, or idle too long)."""
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            idle_since = time.monotonic()
            while not self._closed:
                now, wait = time.monotonic(), None
                for batch in self._queue:
                    due = batch.created + timeout
                    if batch.rows >= self.options.max_batch_size or now >= due:
                        self._queue.remove(batch)
                        return batch
                    wait = due - now if wait is None else min(wait, due - now)
                if wait is None:
                    if now - idle_since >= IDLE_SECONDS:
                        break
                    wait = IDLE_SECONDS - (now - idle_since)
                self._cond.wait(wait)
            self._threads.remove(threading.current_thread())
            return None

    def _loop(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            outputs = self._merged_outputs(tasks)
            for alias, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != batch.rows:
                    raise ServingError("INTERNAL",
                                       f"Batched output tensor '{alias}' has 0th dimension "
                                       f"{value.shape[0] if value.ndim else 'none'}, expected "
                                       f"the batch size {batch.rows}")
            start = 0
            for task in tasks:
                end = start + task.rows
                task.outputs = {alias: value[start:end] for alias, value in outputs.items()}
                start = end
        except BaseException as error:  # noqa: BLE001 - each waiting request gets the error
            for task in tasks:
                task.error = error
        finally:
            self.batches_run += 1
            self.tasks_run += len(tasks)
            for task in tasks:
                task.done.set()

    def _merged_outputs(self, tasks: List[_Task]) -> Dict[str, np.ndarray]:
        """One signature call on the tasks' inputs concatenated along dimension 0."""
        if len(tasks) == 1:
            merged = tasks[0].inputs
        else:
            merged = {alias: np.concatenate([t.inputs[alias] for t in tasks])
                      for alias in tasks[0].inputs}
        return _numpy(self._run(merged))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for batch in pending:
            for task in batch.tasks:
                task.error = ServingError("UNAVAILABLE", "The batch scheduler is shutting down")
                task.done.set()


def _numpy(outputs) -> Dict[str, np.ndarray]:
    return {alias: value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            for alias, value in outputs.items()}


class ProtoBatcher(Batcher):
    """The Batcher of the proto path (serving/proto_calls.py): a task is one request's
    serialized input protos, and a batch is one ProtoCall - parsed and concatenated inside
    TensorFlow, so the batch thread holds the GIL only to hand the protos over."""

    def __init__(self, proto_call, options: BatchingOptions, name: str = ""):
        super().__init__(None, options, name)  # batches run through proto_call
        self.proto_call = proto_call

    def submit_protos(self, serialized, key, rows: int) -> Dict[str, np.ndarray]:
        return self.submit_task(serialized, key, rows,
                                lambda: self.proto_call.run([serialized]))

    def _merged_outputs(self, tasks: List[_Task]) -> Dict[str, np.ndarray]:
        return self.proto_call.run([task.inputs for task in tasks])

