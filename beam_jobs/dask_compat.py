"""Workarounds that let wofn's Beam jobs run on Beam's DaskRunner (checked with Beam 2.77.0).

Beam's DaskRunner (a) turns `beam.io.Read` into a no-op, so `ReadFromParquet` cannot build,
(b) collects a DoFn's outputs before `finish_bundle`, so `BatchElements` (inside RunInference)
loses its last batch, and (c) keeps every GroupByKey output in as many Dask partitions as its
input had, so a job that reads one file runs on one worker whatever the cluster size. `run`
applies a Read override (the source is split while the graph is built, one Create element per
split, so `--dask_npartitions` spreads the splits), a fixed ParDo translation and a GroupByKey
translation that outputs at least `--dask_npartitions` partitions, while the Dask graph is
built; nothing stays patched afterwards. Runner flags:
`--runner=apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address=tcp://HOST:PORT
--dask_npartitions=K` (K = about the number of worker processes; the sampling job's length
GroupByKey then spreads its batches over K partitions).
"""

from __future__ import annotations

from typing import Iterable
from unittest import mock

import apache_beam as beam
import cloudpickle
from apache_beam.pipeline import PTransformOverride


def is_dask(pipeline: beam.Pipeline) -> bool:
    return type(pipeline.runner).__module__.startswith("apache_beam.runners.dask")


def _split_source(source) -> list:
    return list(source.split(desired_bundle_size=64 << 20))


def _read_split(split) -> Iterable:
    source = split.source
    return source.read(source.get_range_tracker(split.start_position, split.stop_position))


class _ReadBoundedSource(beam.PTransform):
    """`beam.io.Read` of a bounded source as plain Create + FlatMap. Beam's DaskRunner replaces
    `Read` with a no-op (its output bag is None, so e.g. `ReadFromParquet` fails to build), but it
    runs Create and ParDo. The source is split here, one Create element per file range, so the
    ranges can land in different Dask partitions."""

    def __init__(self, source):
        super().__init__()
        self._source = source

    def expand(self, pbegin):
        return (
            pbegin
            | "Splits" >> beam.Create(_split_source(self._source))
            | "ReadSplit" >> beam.FlatMap(_read_split)
        )


class _ReadOverride(PTransformOverride):
    def matches(self, applied_ptransform) -> bool:
        transform = applied_ptransform.transform
        return type(transform) is beam.io.Read and isinstance(transform.source, beam.io.iobase.BoundedSource)

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return _ReadBoundedSource(applied_ptransform.transform.source)


def _apply_dofn_to_bundle(items, invoker_args, invoker_kwargs, receivers) -> list:
    """Beam's DaskRunner `apply_dofn_to_bundle`, fixed: it collects the outputs before
    `finish_bundle`, so whatever a DoFn emits there is lost (`BatchElements` emits its last, or
    only, batch there, so RunInference outputs nothing), and it appends to one receiver list that
    partitions deserialized once per worker could share. Here every partition gets its own copy."""
    from apache_beam.runners.common import DoFnInvoker

    invoker_args, invoker_kwargs, receivers = cloudpickle.loads(
        cloudpickle.dumps((invoker_args, invoker_kwargs, receivers)))
    invoker = DoFnInvoker.create_invoker(*invoker_args, **invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return [v.value for v in receivers.values]


def _dask_translations() -> dict:
    """Beam's DaskRunner ParDo translation, using `_apply_dofn_to_bundle`."""
    from apache_beam.runners.dask import transform_evaluator as te

    class DaskParDo(te.ParDo):
        def apply(self, input_bag, side_inputs=None):
            transform = self.transform
            args, kwargs = transform.raw_side_inputs
            main_input = next(iter(self.applied.main_inputs.values()))
            window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
            receivers = te.OneReceiver()
            invoker_args = [
                te.DoFnSignature(transform.fn),
                te._OutputHandler(
                    window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                    per_element_output_counter=None, output_batch_converter=None,
                    process_yields_batches=False, process_batch_yields_elements=False),
            ]
            invoker_kwargs = dict(
                context=te.DoFnContext(transform.label, state=None), side_inputs=side_inputs,
                input_args=list(args), input_kwargs=kwargs, user_state_context=None,
                bundle_finalizer_param=te.DoFn.BundleFinalizerParam(),
            )
            return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
                _apply_dofn_to_bundle, invoker_args, invoker_kwargs, receivers)

    class DaskGroupByKey(te.GroupByKey):
        """Beam's translation, with the output spread over `--dask_npartitions` partitions when
        that is more than the input has."""

        def apply(self, input_bag, side_inputs=None):
            wanted = int(self.bag_kwargs.get("npartitions") or 0)
            if input_bag.npartitions < wanted:  # a task-based groupby keeps its input's partitions
                input_bag = input_bag.repartition(wanted)

            def value(item):
                key, values = item
                return key, [te.defenestrate(v[1]) for v in values]

            return input_bag.groupby(_first).map(value)

    return {beam.ParDo: DaskParDo, te._GroupByKeyOnly: DaskGroupByKey}


def _first(item):
    return item[0]


def run(pipeline: beam.Pipeline):
    """Run `pipeline` on the DaskRunner with the fixes above; returns the runner's result."""
    from apache_beam.runners.dask import transform_evaluator

    pipeline.replace_all([_ReadOverride()])
    with mock.patch.dict(transform_evaluator.TRANSLATIONS, _dask_translations()):
        return pipeline.run()  # the Dask graph is built here, with the fixed translations
