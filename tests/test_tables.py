"""Tables worth reading (issue 33): costly metrics read from checkpoints that have them, no all-X tables,
no duplicate tables when there is no held-out environment."""

from __future__ import annotations

from test_collect_results import rec

from harness.collect_results import build_tables, prune_tables, records_frame


def test_costly_metrics_come_from_a_checkpoint_that_recorded_them():
    """Validation peaks at step 2, where DCI was not computed (every --dci_freq checkpoints): the DCI cell
    reads the best checkpoint among those with DCI (step 3: 0.85 > 0.80 at step 1), and says so."""
    df = records_frame([rec([0], 0, 1, [0.5, 0.80], dci_disentanglement=0.1, mcc=0.2),
                        rec([0], 0, 2, [0.6, 0.95]),
                        rec([0], 0, 3, [0.7, 0.85], dci_disentanglement=0.4, mcc=0.5)])
    tables = {t.title.split(" | ")[-1]: t for t in build_tables(df, ["training_domain"])}
    assert tables["accuracy (%)"].rows == [["A", "60.0", "60.0"]]  # step 2 (validation 0.95)
    dci = tables["DCI disentanglement (x100)"]
    assert dci.rows == [["A", "40.0", "40.0"]] and tables["MCC (x100)"].rows == [["A", "50.0", "50.0"]]
    assert any("selected among the checkpoints that recorded it" in line for line in dci.footer)


def test_all_x_tables_are_left_out_in_one_line_and_twin_tables_merged():
    with_env = records_frame([rec([0], 0, 1, [0.5, 0.9])])  # leave-one-out needs runs of test_envs [0, 1]
    tables, line = prune_tables(build_tables(with_env))
    assert not [t for t in tables if "leave-one-domain-out" in t.title]
    assert line == ("left out 1 table whose cells are all X: 1 x leave-one-domain-out cross-validation on D "
                    "(missing runs: test_envs [0, 1])")
    without = records_frame([rec([], 0, 1, [0.9, 0.9], dci_disentanglement=0.1),
                             rec([], 0, 2, [0.6, 0.6], dci_disentanglement=0.4)])
    tables, line = prune_tables(build_tables(without))
    assert [t.title.split(" | ")[1] for t in tables] == ["training-domain validation = last checkpoint"]
    assert tables[0].rows == [["A", "60.0", "40.0"]] and line == ""
