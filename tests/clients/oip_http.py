"""NVIDIA's tritonclient (HTTP) against a blipserve endpoint: server and model metadata and
health, then one frame and its questions through `infer`, the frame as binary data. Prints one
JSON object for the Rust test (tests/oip.rs) to check.

usage: oip_http.py HOST:PORT MODEL IMAGE QUESTION...
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    url, model, image_path, *questions = sys.argv[1:]
    client = httpclient.InferenceServerClient(url=url)
    with open(image_path, "rb") as f:
        frame = f.read()

    image = httpclient.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([frame], dtype=np.object_), binary_data=True)
    question = httpclient.InferInput("QUESTION", [len(questions)], "BYTES")
    question.set_data_from_numpy(np.array([q.encode() for q in questions], dtype=np.object_), binary_data=True)

    def infer(binary_outputs: bool, request_id: str):
        outputs = [
            httpclient.InferRequestedOutput("PROBABILITY", binary_data=binary_outputs),
            httpclient.InferRequestedOutput("ANSWER", binary_data=binary_outputs),
        ]
        result = client.infer(model, [image, question], outputs=outputs, request_id=request_id)
        return {
            "probabilities": [float(p) for p in result.as_numpy("PROBABILITY")],
            "answers": [a.decode() if isinstance(a, bytes) else str(a) for a in result.as_numpy("ANSWER")],
            "id": result.get_response()["id"],
        }

    print(
        json.dumps(
            {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "server": client.get_server_metadata(),
                "model_ready": client.is_model_ready(model),
                "model": client.get_model_metadata(model),
                "binary": infer(True, "oip-binary"),
                "json": infer(False, "oip-json"),
            }
        )
    )


if __name__ == "__main__":
    main()
