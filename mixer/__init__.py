"""The audio engine: a pure library (no web, database or network code).

geometry  frame sizes          codecs   G.711 / L16 wire codecs     sources  files, clips, tones, DTMF
speech    text to speech        mixer    the per-call Mixer          ducking  caller-speech detection
limiter   output limiter        pacer    the per-call frame clock    errors   domain errors
edges     click-free starts and ends of sources (applied by the Mixer)
"""
