"""firmware_examples/android-litert: what can be checked without an Android SDK.

The app is not built here (no SDK, no Maven access). Checked: it loads the file the LiteRT
exporter writes, at the path its README pushes it to, through LiteRT-LM's Android artifact; that
same .litertlm opening in LiteRT-LM's Python API and answering like our engine (through the same
Conversation API the app uses) is backends/litert/tests/test_litert_lm.py.
"""

import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "firmware_examples" / "android-litert"


def test_the_app_loads_the_file_the_exporter_writes():
    pytest.importorskip("edgeslm_litert", reason="needs the LiteRT backend: pip install edgeslm-litert")
    from edgeslm_litert.litertlm_file import LITERTLM_FILE

    kotlin = (APP / "app/src/main/java/dev/edgeslm/example/MainActivity.kt").read_text()
    path = re.search(r'MODEL_PATH = "([^"]+)"', kotlin).group(1)
    assert Path(path).name == LITERTLM_FILE
    readme = (APP / "README.md").read_text()
    assert f"adb push out/smollm2-litert/{LITERTLM_FILE} {Path(path).parent}/" in readme
    # the Conversation API the Python interop test drives, from the Android artifact
    assert "createConversation()" in kotlin and "sendMessageAsync(" in kotlin
    gradle = (APP / "app/build.gradle.kts").read_text()
    assert "com.google.ai.edge.litertlm:litertlm-android" in gradle


def test_the_gradle_project_is_complete():
    for f in ("settings.gradle.kts", "build.gradle.kts", "app/build.gradle.kts", "app/src/main/AndroidManifest.xml",
              "app/src/main/res/layout/activity_main.xml"):
        assert (APP / f).is_file(), f
    manifest = (APP / "app/src/main/AndroidManifest.xml").read_text()
    assert 'android:name=".MainActivity"' in manifest and "android.intent.action.MAIN" in manifest
    layout = (APP / "app/src/main/res/layout/activity_main.xml").read_text()
    kotlin = (APP / "app/src/main/java/dev/edgeslm/example/MainActivity.kt").read_text()
    for view_id in re.findall(r"R\.id\.(\w+)", kotlin):
        assert f'@+id/{view_id}"' in layout, view_id
