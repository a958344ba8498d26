"""`alto trace synth`: an existing --out file and a bad --seed are refused, naming them."""

from __future__ import annotations

from alto.cli import main


def test_trace_synth_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    """It used to replace any file silently, the bundled default trace included."""
    out = tmp_path / "mine.csv"
    out.write_text("precious\n")
    assert main(["trace", "synth", "--tasks", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: exists" in err and "--overwrite" in err
    assert out.read_text() == "precious\n"
    assert main(["trace", "synth", "--tasks", "3", "--out", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 4


def test_trace_synth_negative_seed_names_the_flag(tmp_path, capsys):
    """numpy's own message was "expected non-negative integer", naming nothing."""
    assert main(["trace", "synth", "--tasks", "3", "--seed", "-5", "--out", str(tmp_path / "t.csv")]) == 2
    assert "--seed must be >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()
