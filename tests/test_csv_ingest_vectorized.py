"""The vectorized ExampleGen (components/csv_ingest.py: Arrow reads and casts, tfx_bsl's C++
encoder) writes the same values as the row-by-row conversion it replaces (tfx_bsl's
ColumnTypeInferrer, TFX's per-cell handlers, types by the contract), including cells that Arrow
cannot cast and columns that are empty or have the wrong type."""
import csv

import pytest

from ctpipe.components import features as F

from tests.support import SAMPLE


def _row_by_row(path, contract):
    """The reference: what the executor wrote before it was vectorized (stock's steps)."""
    from tfx.components.example_gen.csv_example_gen import executor as csv_executor
    from tfx_bsl.coders import csv_decoder

    from ctpipe.components.csv_ingest import header_columns, type_by_contract

    columns = header_columns(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [[cell.encode() for cell in row] for row in list(csv.reader(handle))[1:] if row]
    inferrer = csv_decoder.ColumnTypeInferrer(columns, skip_blank_lines=True)
    accumulator = inferrer.create_accumulator()
    for row in rows:
        accumulator = inferrer.add_input(accumulator, row)
    infos = type_by_contract(inferrer.extract_output(accumulator), contract)
    convert = csv_executor._ParsedCsvToTfExample()  # noqa: SLF001 - the reference itself
    return sorted(example.SerializeToString(deterministic=True) for row in rows
                  for example in convert.process(row, infos))


def _vectorized(path, contract):
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import csv_decoder, example_coder

    from ctpipe.components.csv_ingest import (
        header_columns,
        infer_column_type,
        read_csv_table,
        type_by_contract,
        typed_column,
    )

    columns = header_columns(path)
    table = read_csv_table(path, columns)
    infos = type_by_contract([csv_decoder.ColumnInfo(name, infer_column_type(table.column(name)))
                              for name in columns], contract)
    batch = pa.RecordBatch.from_arrays([typed_column(table.column(i.name), i.type) for i in infos],
                                       [i.name for i in infos])
    return sorted(tf.train.Example.FromString(record).SerializeToString(deterministic=True)
                  for record in example_coder.RecordBatchToExamplesEncoder().encode(batch))


@pytest.mark.parametrize("span", [1, 5, 16])
def test_sample_spans_convert_as_row_by_row(span):
    from ctpipe.components.csv_ingest import contract_column_types

    path = str(SAMPLE / f"span-{span}" / "data.csv")
    contract = contract_column_types()
    assert _vectorized(path, contract) == _row_by_row(path, contract)


def test_cells_arrow_cannot_cast_convert_as_python_does(tmp_path):
    """' 5', '+5', '1_000' are ints to Python, not to Arrow; 2**70 is too big for int64 (stock:
    STRING); 'nan' and '1e3' are floats; an all-empty column without a contract type stays
    untyped; text in a FLOAT contract column keeps its own type; a quoted newline stays."""
    from tfx_bsl.coders import csv_decoder

    path = tmp_path / "data.csv"
    header = ["a", "b", "c", "d", "e", "f", "g"]
    rows = [[" 5", "1", "nan", "", "x", "1.5", '"two\nlines"'],
            ["+5", str(2 ** 70), "1e3", "", "7", "2", "plain"],
            ["1_000", "3", "", "", "", "", ""],
            ["7", "4", "2", "", "y", "oops", "z"]]
    path.write_text(",".join(header) + "\r\n" + "".join(",".join(r) + "\r\n" for r in rows))
    contract = {"a": csv_decoder.ColumnType.INT, "f": csv_decoder.ColumnType.FLOAT,
                "e": csv_decoder.ColumnType.INT}
    assert _vectorized(str(path), contract) == _row_by_row(str(path), contract)


def test_splits_match_split_of_cells():
    """row_splits() gives every row the split that split_of_cells() gives its cells."""
    from ctpipe.components.csv_ingest import (
        header_columns,
        read_csv_table,
        row_key_order,
        row_splits,
        split_of_cells,
    )

    path = str(SAMPLE / "span-3" / "data.csv")
    columns = header_columns(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [[c.encode() for c in row] for row in list(csv.reader(handle))[1:] if row]
    expected = [split_of_cells(row, 2, [2, 3], row_key_order(columns)) for row in rows]
    assert list(row_splits(read_csv_table(path, columns), columns, [2, 3])) == expected
    assert len(columns) == len(F.CSV_COLUMNS)


def _executor_records(path, block_bytes, monkeypatch):
    """What the executor's two DoFns make of a file, read `block_bytes` at a time:
    {split tag: sorted canonical records}."""
    import tensorflow as tf

    from ctpipe.components import csv_ingest

    monkeypatch.setattr(csv_ingest, "CSV_BLOCK_BYTES", block_bytes)
    columns = csv_ingest.header_columns(path)
    [inferred] = list(csv_ingest._InferFileColumnTypes(columns).process(path))  # noqa: SLF001
    convert = csv_ingest._FileToSerializedExamples(  # noqa: SLF001
        columns, csv_ingest.contract_column_types(), [2, 3])
    convert.setup()
    by_split = {}
    for output in convert.process(path, inferred):
        by_split.setdefault(output.tag, []).append(
            tf.train.Example.FromString(output.value).SerializeToString(deterministic=True))
    return inferred, {tag: sorted(records) for tag, records in by_split.items()}


def test_a_file_read_in_blocks_gives_what_one_read_gives(tmp_path, monkeypatch):
    """Blocks of ~2 KB: the column types are the whole file's even where the first block has a
    column empty (a sparse tract) or integer-only (a fare that later has cents), a quoted
    newline never splits a row, and every row lands in the same split."""
    source = SAMPLE / "span-4" / "data.csv"
    lines = source.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    columns = header.split(",")
    fare, tract, company = (columns.index(n) for n in ("fare", "pickup_census_tract", "company"))
    early = []
    for line in rows[:40]:  # first block: tract empty, fares whole numbers
        cells = next(csv.reader([line]))
        cells[tract], cells[fare] = "", str(int(float(cells[fare] or 0)))
        early.append(cells)
    late = [next(csv.reader([line])) for line in rows[40:]]
    late[5][company] = "Taxi\nAffiliation, Inc."  # quoted, with a newline and a comma
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(early + late)
    whole_types, whole = _executor_records(str(path), 1 << 26, monkeypatch)
    block_types, blocks = _executor_records(str(path), 2048, monkeypatch)
    from ctpipe.components.csv_ingest import csv_tables

    assert len(list(csv_tables(str(path), columns, 2048))) > 10  # really read in blocks
    assert block_types == whole_types
    assert blocks == whole
    assert sum(len(records) for records in whole.values()) == len(early) + len(late)
