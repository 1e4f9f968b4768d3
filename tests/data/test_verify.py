from facerec.cli import main
from facerec.data import recordio as rio
from facerec.data.bins import write_bin
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.data.verify import verify_bin, verify_rec


def test_verify_rec_reports_every_bad_record(tmp_path, capsys):
    samples = [(label, encode_jpeg(render_image(0, label, 0, size=32))) for label in range(4)]
    samples[1] = (1, b"\xff\xd8 not a jpeg")
    samples[3] = (3, b"garbage")
    rio.write_face_rec(tmp_path / "t.rec", samples)
    report = verify_rec(tmp_path / "t.rec")
    assert report.checked == 4 and len(report.problems) == 2
    assert "key 2" in report.problems[0] and "key 4" in report.problems[1]
    assert main(["data", "verify", str(tmp_path / "t.rec")]) == 1
    assert "2 problem(s)" in capsys.readouterr().out


def test_verify_clean_files_pass(tmp_path):
    imgs = [encode_jpeg(render_image(0, i, 0, size=32)) for i in range(4)]
    write_bin(tmp_path / "v.bin", imgs, [True, False])
    assert verify_bin(tmp_path / "v.bin").ok
    rio.write_face_rec(tmp_path / "t.rec", [(i, b) for i, b in enumerate(imgs)])
    assert main(["data", "verify", str(tmp_path / "t.rec")]) == 0


def test_verify_bin_names_bad_image(tmp_path):
    write_bin(tmp_path / "v.bin", [encode_jpeg(render_image(0, 0, 0, size=32)), b"xx"], [True])
    report = verify_bin(tmp_path / "v.bin")
    assert len(report.problems) == 1 and "image 1" in report.problems[0]
