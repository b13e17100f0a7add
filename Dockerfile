# eqdeploy conversion image: the [convert] stack on CPU torch 2.13.
# (No Docker engine runs on the project's machines; tests/test_install.py runs the same
#  install steps in a fresh venv instead.)
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/eqdeploy
COPY pyproject.toml README.md ./
COPY eqdeploy ./eqdeploy
COPY tools ./tools
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir ".[convert]" \
    && tools/install_escnn.sh "$(command -v python)"
WORKDIR /work
ENTRYPOINT ["eqdeploy"]
CMD ["--help"]
