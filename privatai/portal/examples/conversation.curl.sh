curl __BASE_URL__/chat/completions \
  -H "Authorization: Bearer $PRIVATAI_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "__MODEL__",
    "messages": [
      {"role": "system", "content": "Answer in one sentence."},
      {"role": "user", "content": "What is the capital of Germany?"},
      {"role": "assistant", "content": "The capital of Germany is Berlin."},
      {"role": "user", "content": "What is its population?"}
    ],
    "max_tokens": 100
  }'
