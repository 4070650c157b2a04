import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

completion = client.chat.completions.create(
    model="__MODEL__",
    messages=[{"role": "user", "content": "What is machine learning?"}],
    max_tokens=100,
)
print(completion.choices[0].message.content)
print(completion.usage)
