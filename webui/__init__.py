"""The browser chat: a Gradio app over llama2 models (`llama2 webui`)."""
