"""CSV input: separators, time and label columns, channel selection, and one clear error per problem."""

from __future__ import annotations

import numpy as np
import pytest

from latentwatch.detectors.csvdata import CSVError, read_csv


def write(tmp_path, text, name="data.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_semicolon_file_with_time_and_label_columns(tmp_path):
    p = write(tmp_path, "datetime;a;b;anomaly;changepoint\n2020-01-01 00:00:00;1.5;2;0;0\n"
                        "2020-01-01 00:00:01;3;4e-1;1;0\n")
    d = read_csv(p)
    assert d.channels == ["a", "b"] and d.time_column == "datetime"
    assert d.values.dtype == np.float32 and d.values.tolist() == [[1.5, 2.0], [3.0, pytest.approx(0.4)]]
    assert d.timestamps.tolist() == ["2020-01-01 00:00:00", "2020-01-01 00:00:01"]
    assert d.labels["anomaly"].tolist() == [0, 1] and set(d.labels) == {"anomaly", "changepoint"}


def test_comma_file_columns_option_and_explicit_time_column(tmp_path):
    p = write(tmp_path, "when,x,y,z\nt0,1,2,3\nt1,4,5,6\n")
    with pytest.raises(CSVError, match=r"line 2: non-numeric value 't0' in column 'when'"):
        read_csv(p)  # "when" is not a known time name, so it counts as a channel
    d = read_csv(p, time_column="when", columns=["z", "x"])
    assert d.channels == ["z", "x"] and d.values.tolist() == [[3, 1], [6, 4]]
    assert d.timestamps.tolist() == ["t0", "t1"]


def test_file_without_time_column_is_all_channels(tmp_path):
    d = read_csv(write(tmp_path, "x,y\n1,2\n3,4\n"))
    assert d.timestamps is None and d.channels == ["x", "y"] and len(d) == 2


def test_model_channels_reorder_the_file(tmp_path):
    d = read_csv(write(tmp_path, "ts,b,a\n0,2,1\n"), expect_channels=["a", "b"])
    assert d.channels == ["a", "b"] and d.values.tolist() == [[1, 2]]


@pytest.mark.parametrize("text,message", [
    ("", r"line 1: the file is empty"),
    ("ts,a,b\n", r"line 2: no data rows"),
    ("ts,a,b\n0,1,2\n1,3\n", r"line 3: 2 fields, but the header has 3"),
    ("ts,a,b\n0,1,2\n1,3,4,5\n", r"line 3: 4 fields, but the header has 3"),
    ("ts,a,b\n0,1,2\n1,3,4\n2,abc,5\n", r"line 4: non-numeric value 'abc' in column 'a'"),
    ("ts,a,b\n0,1,2\n1,,4\n", r"line 3: an empty cell \(missing value\) in column 'a'"),
    ("ts,a,b\n0,1,nan\n", r"line 2: 'nan' in column 'b' is not a finite number"),
    ("ts,a,a\n0,1,2\n", r"line 1: duplicate column names \['a'\]"),
    ("ts,anomaly\n0,1\n", r"line 1: no channel columns"),
])
def test_bad_files_raise_one_clear_error(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(CSVError, match=message) as info:
        read_csv(p)
    assert str(p) in str(info.value)


def test_missing_columns_and_channel_mismatch(tmp_path):
    p = write(tmp_path, "ts,a,b\n0,1,2\n")
    with pytest.raises(CSVError, match=r"line 1: no column\(s\) \['c'\]"):
        read_csv(p, columns=["a", "c"])
    with pytest.raises(CSVError, match=r"line 1: no time column 'when'"):
        read_csv(p, time_column="when")
    with pytest.raises(CSVError, match=r"channels differ from the model's \(missing \['c'\]; not in the model \['b'\]\)"):
        read_csv(p, expect_channels=["a", "c"])
    with pytest.raises(CSVError, match=r"cannot read the file"):
        read_csv(tmp_path / "absent.csv")


def test_fast_and_careful_parsers_agree(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    lines = ["timestamp;" + ";".join(f"c{i}" for i in range(5)) + ";label"]
    lines += [f"2024-01-01T00:{i // 60:02d}:{i % 60:02d};" + ";".join(f"{v:.6g}" for v in row) + ";0"
              for i, row in enumerate(X)]
    p = write(tmp_path, "\n".join(lines) + "\n")
    fast, careful = read_csv(p), read_csv(p, fast=False)
    assert np.array_equal(fast.values, careful.values) and np.array_equal(fast.timestamps, careful.timestamps)
    assert fast.values.shape == (2000, 5) and np.allclose(fast.values, X, rtol=1e-5)
    assert np.array_equal(fast.labels["label"], careful.labels["label"])


def test_quoted_cells_and_blank_lines_are_read(tmp_path):
    d = read_csv(write(tmp_path, 'time,"a",b\n"2020-01-01, 00:00",1,2\n\n"2020-01-01, 00:01",3,4\n'))
    assert d.values.tolist() == [[1, 2], [3, 4]] and d.timestamps.tolist()[1] == "2020-01-01, 00:01"
