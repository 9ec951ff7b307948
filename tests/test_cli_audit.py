"""`bedtime audit verify`: exit 0 for an intact log, 1 for a tampered one, with the reason printed."""
from appliance.audit import AuditLog
from appliance.cli import main


def test_audit_verify_command(tmp_path, capsys):
    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync=False)
    for i in range(3):
        log.append("breather_step", level=0.1 * i)
    assert main(["audit", "verify", str(path)]) == 0
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("0.1", "0.3")
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out
