"""The request model of POST /v1/images/generations (OpenAI's CreateImageRequest, plus `seed`) and
its proto."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr

from facade.api.validation import Int64, UInt32, shows_limit
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.images.v1 import images_pb2 as pb
from services.images import limits

DEFAULT_SIZE = "1024x1024"
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[x*×]\s*(\d{1,5})\s*$")


class ImageRequest(BaseModel):
    """OpenAI's CreateImageRequest (plus `seed`, an extension for reproducible images), as types; the
    prompt's length, n, the sizes, qualities and styles a model takes are the images service's rules
    (services/images/servicer.py). null means the default, as in OpenAI's document."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr | None = None  # None: the images service's default model
    prompt: StrictStr = shows_limit(limits.DOCUMENTED, "prompt", ...)
    n: UInt32 | None = shows_limit(limits.DOCUMENTED, "n")
    # The seed writes "1024*1024", OpenAI "1024x1024"; both are accepted.
    size: StrictStr | None = None
    response_format: Literal["b64_json", "url"] | None = None  # None: b64_json
    quality: StrictStr | None = shows_limit(limits.DOCUMENTED, "quality")
    style: StrictStr | None = shows_limit(limits.DOCUMENTED, "style")
    user: StrictStr | None = None
    seed: Int64 | None = None

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
        match = _SIZE.match(self.size or DEFAULT_SIZE)
        # a malformed size goes on as 0x0: the service rejects it listing the model's sizes
        width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        request = pb.GenerateRequest(
            model=self.model or "",
            prompt=self.prompt,
            width=width,
            height=height,
            delivery=pb.DELIVERY_STORED if self.response_format == "url" else pb.DELIVERY_INLINE,
            quality=self.quality or "",
            style=self.style or "",
            caller=caller,
        )
        if self.n is not None:
            request.n = self.n
        if self.seed is not None:
            request.seed = self.seed
        return request
