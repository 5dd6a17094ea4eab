"""NVIDIA's tritonclient (gRPC) against blipserve's gRPC port: server and model metadata and
health, then one frame and its questions through `infer`. Prints one JSON object for the Rust
test (tests/oip.rs) to check.

usage: oip_grpc.py HOST:PORT MODEL IMAGE QUESTION...
A W3C trace context in $TRACEPARENT goes along with the `infer` call (tests/tracing.rs).
"""

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    url, model, image_path, *questions = sys.argv[1:]
    client = grpcclient.InferenceServerClient(url=url)
    with open(image_path, "rb") as f:
        frame = f.read()
    image = grpcclient.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([frame], dtype=np.object_))
    question = grpcclient.InferInput("QUESTION", [len(questions)], "BYTES")
    question.set_data_from_numpy(np.array([q.encode() for q in questions], dtype=np.object_))
    outputs = [grpcclient.InferRequestedOutput("PROBABILITY"), grpcclient.InferRequestedOutput("ANSWER")]
    headers = {"traceparent": os.environ["TRACEPARENT"]} if os.environ.get("TRACEPARENT") else None
    result = client.infer(model, [image, question], outputs=outputs, request_id="oip-grpc", headers=headers)
    metadata = client.get_model_metadata(model, as_json=True)
    try:
        client.get_model_metadata("resnet")
        unknown = "answered"
    except grpcclient.InferenceServerException as e:
        unknown = e.status()
    print(
        json.dumps(
            {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "server": client.get_server_metadata(as_json=True),
                "model_ready": client.is_model_ready(model),
                "model": metadata,
                "unknown_model": unknown,
                "probabilities": [float(p) for p in result.as_numpy("PROBABILITY")],
                "answers": [a.decode() if isinstance(a, bytes) else str(a) for a in result.as_numpy("ANSWER")],
                "id": result.get_response(as_json=True)["id"],
            }
        )
    )


if __name__ == "__main__":
    main()
