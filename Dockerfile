# One image for both roles of a farm: `lorastudio serve --no-worker` and `lorastudio worker`.
# CPU torch by default; for NVIDIA GPUs build FROM an image with CUDA torch, or pass
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch \
 && pip install --no-cache-dir ".[postgres]" s3fs
ENTRYPOINT ["lorastudio"]
