"""certs.verify_file_chain: a restore of workshop-base (nothing serves https before the
Apache step) verifies dehydrated's fullchain.pem on the host for the API name against
the republished root. Facts in (the files a guest holds), verdict out. The chains are
built like pebble's (root -> intermediate -> leaf, a non-critical subjectAltName):
the verifier applies the Web PKI profile, which trustme's leaves do not meet."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from entelab import certs
from entelab.errors import StageFailed


class FileGuest:
    """Answers ``read`` from a dict of guest paths (what the VM holds)."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def read(self, path: str, sudo: bool = True) -> str:
        return self.files.get(path, "")


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, names: tuple[str, ...] = ()):
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                            critical=True)
    else:
        b = (b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                             critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                            critical=False))
    return b.sign(issuer_key, hashes.SHA256())


def chain_for(*names: str):
    """(root, [leaf, intermediate]) like pebble's."""
    rk, ik, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Lab Root", rk, "Lab Root", rk, ca=True)
    inter = _cert("Lab Intermediate", ik, "Lab Root", rk, ca=True)
    leaf = _cert(names[0], lk, "Lab Intermediate", ik, ca=False, names=names)
    return root, [leaf, inter]


def pem(*cs) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in cs)


def guest_with(settings, chain) -> FileGuest:
    conf = certs.dehydrated_conf(settings)
    return FileGuest({f"{conf.basedir}/certs/{conf.domain}/fullchain.pem": pem(*chain)})


def test_the_labs_chain_verifies_and_gives_the_leaf_serial(rendered, tmp_path):
    s = rendered.settings
    root, chain = chain_for(*s.cert_names)
    (tmp_path / "root.pem").write_text(pem(root))
    serial = certs.verify_file_chain(guest_with(s, chain), s, tmp_path / "root.pem")
    assert int(serial, 16) == chain[0].serial_number and len(serial) % 2 == 0


@pytest.mark.parametrize("case", ["other root", "other name", "no file"])
def test_a_chain_that_does_not_verify_is_refused_naming_the_file(rendered, tmp_path, case):
    s = rendered.settings
    root, chain = chain_for(*(["elsewhere.example"] if case == "other name" else s.cert_names))
    other_root, _ = chain_for("x.example")
    (tmp_path / "root.pem").write_text(pem(other_root if case == "other root" else root))
    guest = FileGuest({}) if case == "no file" else guest_with(s, chain)
    with pytest.raises(StageFailed) as err:
        certs.verify_file_chain(guest, s, tmp_path / "root.pem")
    assert "fullchain.pem in the VM does not verify" in str(err.value)
    assert s.api_host in str(err.value) and err.value.hint == "./labctl lab.renew issues a new one"
