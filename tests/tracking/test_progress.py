"""The progress line carries what the user watches: epoch, loss, lr, grad norm, tokens/s, eval loss, memory."""

from tunelab.tracking.progress import TrainProgress, process_rss_gib


def test_describe_has_every_field():
    line = TrainProgress.describe({"epoch": 1.5, "loss": 0.12345, "lr": 2e-4, "grad_norm": 0.75,
                                   "tokens_per_s": 1234.5, "eval_loss": 0.5, "mem_gib": 3.25})
    assert line == "ep 1.50  loss 0.1235  lr 2.00e-04  gn 0.75  1,234 tok/s  eval 0.5000  3.2 GiB"


def test_memory_falls_back_to_process_rss():
    rss = process_rss_gib()
    assert rss is not None and 0.01 < rss < 64
    assert TrainProgress.describe({"loss": 1.0}).endswith(f"{rss:.1f} GiB")


def test_plain_lines_on_non_terminals_with_eta(capsys):
    bar = TrainProgress(total_steps=4)
    for step in range(1, 5):
        bar.update(step, {"loss": 1.0 / step, "tokens_per_s": 10.0})
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("step 1/4  loss 1.0000") and "ETA" in err[0]
    assert err[-1].startswith("step 4/4  loss 0.2500")
