"""Built-in texts for the export's parity check and for static int8 calibration (offline: nothing is downloaded).

The parity sample is chosen to find the texts an exported variant gets most wrong, not the average ones: one-word
and empty-ish inputs (where one quantised vector dominates the mean pooling), texts longer than any model's maximum
length (truncation, the last positions), and non-English text (German, French, Spanish, Russian, Chinese, Japanese,
Arabic: sub-word and ``[UNK]`` heavy). The gate judges the *minimum* cosine over it.

The calibration sample gives static quantisation the activation ranges of real inputs: several domains (science,
medicine, finance, support requests, code, news, chat), a spread of lengths from one word to a full max-length
window, and the same non-English texts. Users calibrate on their own texts with ``calibration=path``
(:func:`read_texts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_LONG = (
    "The patient presented with fever, cough and shortness of breath for three days; chest radiography showed "
    "bilateral infiltrates, and the oxygen saturation fell to eighty-eight percent on room air before treatment. "
)

PARITY_SAMPLE: list[str] = [
    # very short
    "ok",
    "Hi!",
    "a",
    "?",
    "Paris",
    "insulin",
    "thanks",
    "404",
    # ordinary sentences and questions
    "A man is playing a guitar.",
    "How do I reset my bank card PIN?",
    "what is the capital of france",
    "Paris is the capital and most populous city of France.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "The new movie is awesome and I would watch it again with my whole family this weekend.",
    "I lost my wallet yesterday, can you freeze my account?",
    "Children are playing in the park near the lake while their parents watch.",
    "Quantum entanglement links the states of two particles regardless of distance.",
    "def add(a, b): return a + b",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "Glucose uptake in skeletal muscle is regulated by insulin through translocation of GLUT4 transporters "
    "to the plasma membrane, a process impaired in type 2 diabetes.",
    # non-English
    "Ein Mann spielt Gitarre.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "¿Dónde está la estación de tren más cercana?",
    "Москва — столица России.",
    "我喜欢在周末读书和散步。",
    "東京は日本の首都です。",
    "القاهرة هي عاصمة مصر.",
    # long: beyond every maximum sequence length, so truncation and the last positions are exercised
    _LONG * 3,
    _LONG * 12,
    "Vitamin D deficiency is associated with reduced bone mineral density and an increased risk of fractures in "
    "older adults. " * 20,
]

# Texts that choose, not judge: the search for int8-tolerant layers
# (:func:`gte_st.export.quantize.search_int8_down_projections`) scores candidates on these, so the gate still judges
# its result on the parity sample, which the search never sees. Mostly one- and two-word texts, where int8 breaks.
SELECTION_SAMPLE: list[str] = [
    "hello", "thank you", "yes", "no", "please", "sorry", "help", "refund", "password", "weather today",
    "good morning", "bye", "cheers", "great", "why?", "!", "42", "2024", "N/A", "email", "pizza", "cancel order",
    "merci", "danke", "gracias", "спасибо", "谢谢", "ありがとう", "شكرا", "hola", "bonjour", "ciao",
    "lol", "idk", "test", "football", "cancer", "python", "bitcoin",
    "The bridge was closed for repairs over the weekend.",
    "Which vaccine is recommended for travellers to Kenya?",
    "Der Zug hat zwanzig Minuten Verspätung.",
]  # fmt: skip

_CALIBRATION_BASE: list[str] = [
    "Mutations in the BRCA1 gene increase the lifetime risk of breast and ovarian cancer.",
    "The mitochondrial electron transport chain generates a proton gradient that drives ATP synthesis.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "Antibiotic resistance spreads between bacteria through horizontal gene transfer on plasmids.",
    "The vaccine induced neutralising antibodies in ninety-five percent of participants after two doses.",
    "Sleep deprivation impairs working memory and reaction time in healthy volunteers.",
    "Chronic inflammation contributes to the development of atherosclerosis.",
    "The randomized controlled trial found no significant difference between the two treatment arms.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The James Webb Space Telescope observes the universe in infrared light.",
    "Plate tectonics explains the distribution of earthquakes and volcanoes along continental margins.",
    "A neural network learns a function by adjusting its weights to minimise a loss.",
    "The central bank kept interest rates unchanged, citing persistent inflation.",
    "Quarterly revenue grew twelve percent, driven by strong demand for cloud services.",
    "Oil prices rose after the producers agreed to extend their output cuts.",
    "The company announced a merger that will create the largest retailer in the region.",
    "Shares of the chipmaker fell after it lowered its full-year forecast.",
    "How do I change the password of my online banking account?",
    "My card was declined at the supermarket even though I have money on my account.",
    "Can I get a refund if my flight was cancelled by the airline?",
    "The app crashes every time I try to upload a photo.",
    "Why has my package not arrived yet? The tracking number says it was delivered.",
    "Please cancel my subscription and confirm by email.",
    "Is there a fee for transferring money abroad?",
    "for i in range(10): print(i * i)",
    "import numpy as np\nx = np.linspace(0, 1, 100)\ny = np.sin(2 * np.pi * x)",
    "git commit -m 'fix the off-by-one error in the pagination code'",
    "The function returns None when the key is missing from the dictionary.",
    "Use a context manager to make sure the file is closed even if an exception is raised.",
    "The national team won the championship after a penalty shoot-out.",
    "Heavy rain caused flooding in several villages along the river.",
    "The museum reopened its doors after a two-year renovation.",
    "Firefighters contained the wildfire before it reached the town.",
    "The parliament passed a law to reduce plastic waste.",
    "A woman is slicing an onion in the kitchen.",
    "A group of people are hiking up a steep mountain trail.",
    "The cat is sitting on the windowsill watching the birds.",
    "A boy is riding a bicycle down the street.",
    "Two men are playing chess in the park.",
    "lol that was so funny",
    "see you tomorrow at 9",
    "does anyone know a good pizza place near the station",
    "best laptop for programming under 1000 dollars",
    "symptoms of vitamin b12 deficiency",
    "how long to boil an egg",
    "python list comprehension with condition",
    "Die Bundesregierung plant neue Investitionen in erneuerbare Energien.",
    "Wie spät ist es?",
    "La réunion a été reportée à la semaine prochaine.",
    "Je voudrais réserver une table pour deux personnes.",
    "El gobierno anunció nuevas medidas para reducir el desempleo.",
    "Me gusta mucho la música clásica.",
    "Il treno per Milano parte alle otto.",
    "O tempo está ótimo para ir à praia.",
    "Сегодня холодно и идёт снег.",
    "人工智能正在改变我们的生活方式。",
    "今日はとても暑いですね。",
    "오늘 날씨가 정말 좋네요.",
    "الطقس جميل اليوم.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
]


def calibration_sample(size: int = 200) -> list[str]:
    """``size`` built-in calibration texts: the base texts, the parity sample, then pairs and runs of base texts
    joined into longer documents (up to well beyond 512 tokens), so that every length bucket is represented."""
    base = _CALIBRATION_BASE
    texts = list(base) + list(PARITY_SAMPLE)
    step = 0
    while len(texts) < size:
        width = 2 + step % 12  # 2 .. 13 sentences: about 30 to 250 words
        start = (step * 7) % len(base)
        texts.append(" ".join(base[(start + j) % len(base)] for j in range(width)))
        step += 1
    return texts[:size]


def read_texts(source: str | Path | Sequence[str], limit: int | None = None) -> list[str]:
    """Texts from a list, or from a file read by :func:`gte_st.corpus.read_corpus`, the one corpus reader: a
    ``.txt`` file (one text per line), jsonl[.gz] / json / csv / tsv / parquet rows (the text field, its ``title``
    prepended, as in a BEIR ``corpus.jsonl.gz``) or a BEIR folder; a bad file or row is an error naming both. Blank
    texts are skipped; ``limit`` keeps the first N."""
    if isinstance(source, (str, Path)):
        from gte_st.corpus import read_corpus

        _, texts = read_corpus(source)
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{source}: no texts")
    return texts[:limit] if limit else texts
