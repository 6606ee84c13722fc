"""The `audit:` section and `metrics_tenant_labels`: defaults, values, FILE:LINE errors."""

from __future__ import annotations

import pytest

from proxy.config import AuditSettings, Config, parse_config
from proxy.errors import ConfigError
from proxy.observability.audit import AuditLog

pytestmark = pytest.mark.timeout(30)

# lines 1-10; cases append from line 11
BASE = """\
clusters:
  main:
    hosts: ["127.0.0.1:5432"]
    user: tenantgate
users:
  app:
    password: pw
    tenants: ["*"]
tenants:
  acme: {strategy: database, database: acme}
"""
KEY = "0123456789abcdef0123456789abcdef"
ENV = {"TENANTGATE_AUDIT_KEY": KEY}


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, "cfg.yaml", ENV if env is None else env)


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


def test_defaults():
    config = load(BASE)
    assert config.audit is None
    assert config.metrics_tenant_labels is True


def test_minimal_audit_section_with_key_from_environment():
    config = load(BASE + 'audit:\n  path: /var/log/tenantgate/audit.jsonl\n'
                         '  hmac_key: "${TENANTGATE_AUDIT_KEY}"\n')
    assert config.audit == AuditSettings(path="/var/log/tenantgate/audit.jsonl",
                                         hmac_key=KEY.encode())
    assert config.audit.every_statement is False
    assert config.audit.max_bytes == 104857600
    assert config.audit.checkpoint_key is None
    assert KEY not in repr(config.audit) and KEY not in repr(config)


def test_full_audit_section():
    config = load(BASE + """\
audit:
  path: audit.log
  hmac_key: "${TENANTGATE_AUDIT_KEY}"
  every_statement: true
  max_bytes: 1048576
  checkpoint_key: /etc/tenantgate/audit-ed25519.pem
metrics_tenant_labels: false
""")
    assert config.audit == AuditSettings(
        path="audit.log", hmac_key=KEY.encode(), every_statement=True, max_bytes=1048576,
        checkpoint_key="/etc/tenantgate/audit-ed25519.pem")
    assert config.metrics_tenant_labels is False


def test_null_audit_section_means_off():
    assert load(BASE + "audit:\n").audit is None


def test_audit_log_from_settings(tmp_path):
    config = load(BASE + f'audit: {{path: "{tmp_path}/a.log", hmac_key: "{KEY}", '
                         'every_statement: true, max_bytes: 65536}\n')
    audit = AuditLog.from_settings(config.audit)
    assert audit.path == f"{tmp_path}/a.log" and audit.wants_statements
    assert audit._writer.key == KEY.encode() and audit._writer.max_bytes == 65536


@pytest.mark.parametrize("text, message", [
    (BASE + "audit:\n  hmac_key: x\n",
     "cfg.yaml:11: audit: missing required key 'path'"),
    (BASE + "audit:\n  path: a.log\n",
     "cfg.yaml:11: audit: missing required key 'hmac_key'"),
    (BASE + f"audit:\n  path: a.log\n  hmac_key: {KEY}\n  max_byte: 70000\n",
     "cfg.yaml:14: audit: unknown key 'max_byte' (did you mean 'max_bytes'?)"),
    (BASE + "audit:\n  path: a.log\n  hmac_key: short\n",
     "cfg.yaml:13: audit.hmac_key: at least 16 bytes are needed, got 5 "
     "(make one with `openssl rand -hex 32`)"),
    (BASE + "audit:\n  path: a.log\n  hmac_key: \"${NOT_SET}\"\n",
     "cfg.yaml:13: environment variable NOT_SET is not set"),
    (BASE + f"audit:\n  path: a.log\n  hmac_key: {KEY}\n  max_bytes: 1000\n",
     "cfg.yaml:14: audit.max_bytes: must be at least 65536, got 1000"),
    (BASE + f"audit:\n  path: a.log\n  hmac_key: {KEY}\n  max_bytes: 1e6\n",
     "cfg.yaml:14: audit.max_bytes: expected an integer, got the string '1e6'"),
    (BASE + f"audit:\n  path: a.log\n  hmac_key: {KEY}\n  every_statement: yes please\n",
     "cfg.yaml:14: audit.every_statement: expected true or false, "
     "got the string 'yes please'"),
    (BASE + f"audit:\n  path: \"\"\n  hmac_key: {KEY}\n",
     "cfg.yaml:12: audit.path: must not be empty"),
    (BASE + f"audit:\n  path: [a.log]\n  hmac_key: {KEY}\n",
     "cfg.yaml:12: audit.path: expected a string, got a list"),
    (BASE + "audit: a.log\n",
     "cfg.yaml:11: audit: expected a mapping, got the string 'a.log'"),
    (BASE + "metrics_tenant_labels: 1\n",
     "cfg.yaml:11: metrics_tenant_labels: expected true or false, got the number 1"),
    (BASE + "metrics_tenant_label: false\n",
     "cfg.yaml:11: unknown key 'metrics_tenant_label' "
     "(did you mean 'metrics_tenant_labels'?)"),
])
def test_errors_name_file_and_line(text: str, message: str):
    assert error(text) == message
