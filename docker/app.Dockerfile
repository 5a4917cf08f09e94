# syntax=docker/dockerfile:1.7
# The façade and the gRPC services: one Dockerfile, one image per component.
#
#   docker build -f docker/app.Dockerfile --build-arg MODULE=facade          -t hubmesh/facade:0.1.0 .
#   docker build -f docker/app.Dockerfile --build-arg MODULE=services.text   -t hubmesh/text:0.1.0 .
#   (services.embeddings, services.images likewise; `make images-build` runs all of them)
#
# The protobuf/gRPC code is generated here, as `make proto` does locally, and never committed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the runtime dependencies of pyproject.toml (the project itself installs no package)
COPY pyproject.toml ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .
# code generation in a venv of its own, grpcio-tools matching the runtime's grpcio and protobuf
RUN /opt/venv/bin/pip freeze > /tmp/runtime.txt \
 && python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install --constraint /tmp/runtime.txt \
      "grpcio-tools==$(/opt/venv/bin/python -c 'import grpc; print(grpc.__version__)')"
COPY protos ./protos
RUN mkdir -p build/gen \
 && /opt/codegen/bin/python -m grpc_tools.protoc -Iprotos --python_out=build/gen --pyi_out=build/gen \
      --grpc_python_out=build/gen $(find protos -name '*.proto')

FROM ${PYTHON_IMAGE}
ARG MODULE
LABEL org.opencontainers.image.title="hubmesh-${MODULE}"
RUN groupadd --gid 10001 hubmesh \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hubmesh
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/build/gen /app/build/gen
COPY facade /app/facade
COPY services /app/services
# the project's import path as `make setup` writes it locally (a .pth in the venv), not a PYTHONPATH;
# byte-compiled at build time: the root filesystem is read-only at run time
RUN /opt/venv/bin/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "hubmesh.pth").write_text("/app\n/app/build/gen\n")' \
 && /opt/venv/bin/python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUBMESH_MODULE=${MODULE}
WORKDIR /app
USER 10001:10001
EXPOSE 8080 50051 50052 50053 9464
CMD ["sh", "-c", "exec python -m \"$HUBMESH_MODULE\""]
