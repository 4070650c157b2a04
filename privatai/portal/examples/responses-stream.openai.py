import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

stream = client.responses.create(
    model="__MODEL__",
    input="Hello, how are you?",
    max_output_tokens=100,
    stream=True,
)
for event in stream:
    if event.type == "response.output_text.delta":
        print(event.delta, end="", flush=True)
    elif event.type in ("response.completed", "response.incomplete"):
        # response.incomplete: the answer was cut at max_output_tokens
        print(f"\n[{event.response.usage.total_tokens} tokens]")
