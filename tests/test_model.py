import json
import os

import pytest

from fliprm.errors import ModelIntegrityError
from fliprm.model import sha256_file, verify_file


def test_wrong_file_is_refused_with_a_fix(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF not really a model")
    with pytest.raises(ModelIntegrityError, match="refusing to load.*Delete the file"):
        verify_file(f, "0" * 64)


def test_a_file_changed_in_place_with_its_mtime_restored_is_refused(tmp_path):
    # Regression: a ".verified" stamp keyed on size/mtime/inode trusted a file whose bytes
    # were changed in place with the mtime put back (and a forged stamp). Every load hashes.
    f = tmp_path / "model.gguf"
    f.write_bytes(b"good bytes" * 1000)
    good = sha256_file(f)
    verify_file(f, good)
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(4000)
        fh.write(b"EVIL")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    (tmp_path / "model.gguf.verified").write_text(
        json.dumps({"sha256": good, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "ino": st.st_ino}))
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        verify_file(f, good)


def test_corrupt_gguf_is_refused_by_the_embedded_backend(tmp_path):
    from fliprm.backends.embedded import EmbeddedBackend

    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 1000)
    backend = EmbeddedBackend(f, sha256="1" * 64)
    with pytest.raises(ModelIntegrityError):
        backend.start()
