"""`cmake --install <build> --component python --prefix P` (CTest label `python`): the installed
package imports from P/lib/python3/dist-packages alone (not the build tree), its extension finds
its libraries, and shardps.torch passes its torch-version check there."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
import shardps_check as sc  # noqa: E402


def test_install(tmp_path):
    build = os.environ["SHARDPS_BUILD_DIR"]
    prefix = tmp_path / "prefix"
    r = subprocess.run(["cmake", "--install", build, "--component", "python", "--prefix", str(prefix)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"cmake --install failed:\n{r.stdout}\n{r.stderr}"
    site = prefix / "lib" / "python3" / "dist-packages"
    assert (site / "shardps" / "__init__.py").is_file() and not (site / "shardps" / "__init__.py").is_symlink()
    env = sc.clean_env()
    env["PYTHONPATH"] = str(site)
    code = ("import shardps, shardps.torch, sys; "
            "assert shardps.__file__.startswith(sys.argv[1]), shardps.__file__; "
            "print(shardps.__file__, ' '.join(shardps.optimizers()))")
    r = subprocess.run(["/usr/bin/python3", "-c", code, str(site)], capture_output=True, text=True, timeout=120,
                       env=env, cwd=str(tmp_path))
    assert r.returncode == 0, f"the installed package does not import:\n{r.stdout}\n{r.stderr}"
    assert "adam" in r.stdout, r.stdout
    print(r.stdout.strip())
