curl "__BASE_URL__/usage?by_model=true" \
  -H "Authorization: Bearer $PRIVATAI_API_KEY"
