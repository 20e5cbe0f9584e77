"""Text and media preparation shared by training, chat, batch generation and serving."""
