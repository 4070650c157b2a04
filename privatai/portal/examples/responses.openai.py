import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

response = client.responses.create(
    model="__MODEL__",
    instructions="Answer in one sentence.",
    input="What is machine learning?",
    max_output_tokens=100,
)
print(response.output_text)
print(f"[{response.usage.total_tokens} tokens]")
