import os

from openai import OpenAI

client = OpenAI(base_url="__BASE_URL__", api_key=os.environ["PRIVATAI_API_KEY"])

messages = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of Germany?"},
]
answer = client.chat.completions.create(model="__MODEL__", messages=messages, max_tokens=100)
messages.append({"role": "assistant", "content": answer.choices[0].message.content})
messages.append({"role": "user", "content": "What is its population?"})

answer = client.chat.completions.create(model="__MODEL__", messages=messages, max_tokens=100)
print(answer.choices[0].message.content)
