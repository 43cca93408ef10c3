"""The consortium service: authenticates callers by certificate, runs jobs and rounds, and adds
ciphertexts it cannot decrypt. Holds only public/parameters contexts."""
