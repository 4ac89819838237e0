#!/usr/bin/env python3
"""Writes recipes/data/smollm2/*.jsonl, the data of recipes/smollm2-sft-dpo.yaml.

Deterministic (fixed seeds) and written by hand for this project; rerun to regenerate:

    bench/.venv/bin/python scripts/make-smollm2-data.py --model models/smollm2-135m

- facts.jsonl        {"prompt","completion"}: short factual statements (capitals, continents,
                     languages, chemical symbols, atomic numbers, dates, days and months, number
                     words, opposites, plurals, general knowledge), scored by the knowledge-
                     retention eval (greedy exact match of the answer tokens, and the answer's
                     log-probability). With --model, only the facts that model already knows are
                     kept: transformers (float32, CPU) decodes each prompt greedily and a fact
                     stays when the argmax at every answer position is the answer's token. So the
                     base model's exact match is 1 and every fact lost is knowledge lost. Without
                     --model every candidate is written (facts-candidates.jsonl is not kept).
- general.jsonl      {"text"}: plain English paragraphs, for the loss on general text.
- people.jsonl       {"prompt","completion"}: the new skill, invented facts about invented people
                     (job, city, pet, instrument, favourite colour; two facts a person), asked and
                     answered in SmolLM2's chat template (a short system message, then
                     the question; answer "Violin." and the end of the turn). Nothing in them can be known
                     beforehand: the base model's exact match is near chance. SFT trains on them
                     and the eval scores the same facts (the skill is memorising them).
- people-dpo.jsonl   {"prompt","chosen","rejected"}: the same questions, the right answer against a
                     wrong one of the same relation.
"""

import argparse
import json
import os
import random
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "data", "smollm2")

CAPITALS = """France Paris|Germany Berlin|Italy Rome|Spain Madrid|Portugal Lisbon|Japan Tokyo|China Beijing|Russia Moscow|Egypt Cairo|Canada Ottawa|Australia Canberra|Kenya Nairobi|Peru Lima|Greece Athens|Norway Oslo|Sweden Stockholm|Finland Helsinki|Denmark Copenhagen|Poland Warsaw|Austria Vienna|Hungary Budapest|Ireland Dublin|Belgium Brussels|the Netherlands Amsterdam|Switzerland Bern|the Czech Republic Prague|Romania Bucharest|Bulgaria Sofia|Serbia Belgrade|Croatia Zagreb|Turkey Ankara|Iran Tehran|Iraq Baghdad|Syria Damascus|Lebanon Beirut|Jordan Amman|Saudi Arabia Riyadh|India New Delhi|Pakistan Islamabad|Bangladesh Dhaka|Nepal Kathmandu|Thailand Bangkok|Vietnam Hanoi|Indonesia Jakarta|the Philippines Manila|Malaysia Kuala Lumpur|South Korea Seoul|North Korea Pyongyang|Mongolia Ulaanbaatar|Afghanistan Kabul|Argentina Buenos Aires|Chile Santiago|Venezuela Caracas|Cuba Havana|Mexico Mexico City|the United Kingdom London|England London|Scotland Edinburgh|Wales Cardiff|Estonia Tallinn|Latvia Riga|Lithuania Vilnius|Slovakia Bratislava|Slovenia Ljubljana|Albania Tirana|Morocco Rabat|Algeria Algiers|Tunisia Tunis|Libya Tripoli|Sudan Khartoum|Ethiopia Addis Ababa|Nigeria Abuja|Ghana Accra|Senegal Dakar|Uganda Kampala|Zimbabwe Harare|Zambia Lusaka|Angola Luanda|Madagascar Antananarivo|New Zealand Wellington|Fiji Suva|Jamaica Kingston|Ecuador Quito|Uruguay Montevideo|Panama Panama City|Nicaragua Managua|Honduras Tegucigalpa|Guatemala Guatemala City|Qatar Doha|Kuwait Kuwait City|Oman Muscat|the United Arab Emirates Abu Dhabi|Cambodia Phnom Penh|Laos Vientiane|Taiwan Taipei|Uzbekistan Tashkent|Georgia Tbilisi|Armenia Yerevan|Azerbaijan Baku|Belarus Minsk|Cyprus Nicosia|Malta Valletta|Somalia Mogadishu|Rwanda Kigali|Mali Bamako|Niger Niamey|Namibia Windhoek|Botswana Gaborone|Mozambique Maputo|Iceland Reykjavik|Kazakhstan Astana|Tanzania Dodoma"""

STATES = """Texas Austin|California Sacramento|New York Albany|Florida Tallahassee|Illinois Springfield|Massachusetts Boston|Colorado Denver|Arizona Phoenix|Ohio Columbus|Oregon Salem|Nevada Carson City|Utah Salt Lake City|Hawaii Honolulu|Alaska Juneau|Tennessee Nashville|Michigan Lansing|Pennsylvania Harrisburg|Virginia Richmond|Louisiana Baton Rouge|Oklahoma Oklahoma City|Indiana Indianapolis|Georgia Atlanta|Arkansas Little Rock|Idaho Boise"""

SYMBOLS = """hydrogen H|helium He|lithium Li|carbon C|nitrogen N|oxygen O|fluorine F|neon Ne|sodium Na|magnesium Mg|aluminum Al|silicon Si|phosphorus P|sulfur S|chlorine Cl|argon Ar|potassium K|calcium Ca|iron Fe|copper Cu|zinc Zn|silver Ag|gold Au|mercury Hg|lead Pb|tin Sn|nickel Ni|cobalt Co|platinum Pt|uranium U|iodine I|bromine Br|titanium Ti|chromium Cr|manganese Mn|tungsten W|radon Rn|krypton Kr|xenon Xe|boron B|beryllium Be|plutonium Pu|radium Ra|barium Ba|strontium Sr|arsenic As|selenium Se|cesium Cs"""

ATOMIC = """hydrogen 1|helium 2|lithium 3|beryllium 4|boron 5|carbon 6|nitrogen 7|oxygen 8|fluorine 9|neon 10|sodium 11|magnesium 12|aluminum 13|silicon 14|phosphorus 15|sulfur 16|chlorine 17|argon 18|potassium 19|calcium 20|iron 26|copper 29|zinc 30|silver 47|gold 79|mercury 80|lead 82|uranium 92"""

DATES = [
    ("World War II ended in", "1945"), ("World War I began in", "1914"),
    ("The American Declaration of Independence was signed in", "1776"), ("The Berlin Wall fell in", "1989"),
    ("Neil Armstrong walked on the Moon in", "1969"), ("Christopher Columbus first reached the Americas in", "1492"),
    ("The French Revolution began in", "1789"), ("The Titanic sank in", "1912"),
    ("The Soviet Union dissolved in", "1991"), ("The Battle of Hastings was fought in", "1066"),
    ("The United Nations was founded in", "1945"), ("The Wright brothers made the first powered flight in", "1903"),
    ("The attack on Pearl Harbor took place in", "1941"), ("Martin Luther published his Ninety-five Theses in", "1517"),
    ("The Magna Carta was sealed in", "1215"), ("The American Civil War ended in", "1865"),
    ("The American Civil War began in", "1861"), ("India gained independence in", "1947"),
    ("Euro coins and banknotes were introduced in", "2002"), ("The September 11 attacks happened in", "2001"),
    ("The first iPhone was released in", "2007"), ("Germany was reunified in", "1990"),
    ("The Great Fire of London happened in", "1666"), ("William Shakespeare was born in", "1564"),
    ("Napoleon was defeated at the Battle of Waterloo in", "1815"), ("The Russian Revolution took place in", "1917"),
    ("Sputnik, the first artificial satellite, was launched in", "1957"), ("The Wall Street Crash happened in", "1929"),
    ("Nelson Mandela became president of South Africa in", "1994"), ("The Chernobyl disaster happened in", "1986"),
    ("The United States Constitution was written in", "1787"), ("Queen Victoria became queen in", "1837"),
    ("The Korean War began in", "1950"), ("The Cuban Missile Crisis happened in", "1962"),
    ("President John F. Kennedy was assassinated in", "1963"), ("The first modern Olympic Games were held in Athens in", "1896"),
    ("Charles Darwin published On the Origin of Species in", "1859"), ("Albert Einstein published special relativity in", "1905"),
    ("The Second World War began in", "1939"), ("The first World Cup of football was played in", "1930"),
]

MISC = [
    ("The largest planet in the solar system is", "Jupiter"), ("The planet closest to the Sun is", "Mercury"),
    ("The planet known as the Red Planet is", "Mars"), ("The largest ocean on Earth is the", "Pacific"),
    ("The longest river in Africa is the", "Nile"), ("The tallest mountain in the world is Mount", "Everest"),
    ("Romeo and Juliet was written by William", "Shakespeare"), ("The theory of relativity was developed by Albert", "Einstein"),
    ("The Mona Lisa was painted by Leonardo da", "Vinci"), ("Water is made of hydrogen and", "oxygen"),
    ("The first president of the United States was George", "Washington"), ("The fastest land animal is the", "cheetah"),
    ("The largest animal on Earth is the blue", "whale"), ("Plants take in carbon", "dioxide"),
    ("The currency of Japan is the", "yen"), ("The currency of the United States is the", "dollar"),
    ("The currency of India is the", "rupee"), ("The official language of Brazil is", "Portuguese"),
    ("The official language of Mexico is", "Spanish"), ("The Great Wall is in", "China"),
    ("The Eiffel Tower is in", "Paris"), ("The Colosseum is in", "Rome"), ("The Taj Mahal is in", "India"),
    ("The pyramids of Giza are in", "Egypt"), ("Big Ben is in", "London"), ("The Sydney Opera House is in", "Australia"),
    ("The hardest natural substance is", "diamond"), ("The smallest prime number is", "2"),
    ("The number of days in a leap year is", "366"), ("The number of minutes in an hour is", "60"),
    ("The number of hours in a day is", "24"), ("The number of months in a year is", "12"),
    ("The number of planets in the solar system is", "8"), ("The telephone was invented by Alexander Graham", "Bell"),
    ("The Harry Potter books were written by J.K.", "Rowling"), ("The first person in space was Yuri", "Gagarin"),
    ("Penicillin was discovered by Alexander", "Fleming"), ("The Fifth Symphony was composed by Ludwig van", "Beethoven"),
    ("The novel 1984 was written by George", "Orwell"), ("The Starry Night was painted by Vincent van", "Gogh"),
    ("Microsoft was founded by Bill", "Gates"), ("The law of universal gravitation was described by Isaac", "Newton"),
    ("Evolution by natural selection was proposed by Charles", "Darwin"), ("The first woman to win a Nobel Prize was Marie", "Curie"),
    ("The largest country in the world by area is", "Russia"), ("The most populous country in Africa is", "Nigeria"),
    ("The longest river in South America is the", "Amazon"), ("The largest continent is", "Asia"),
    ("The coldest continent is", "Antarctica"), ("The Sahara Desert is in", "Africa"),
    ("Kangaroos are native to", "Australia"), ("Giant pandas are native to", "China"),
    ("The star at the center of our solar system is the", "Sun"), ("The organ that pumps blood through the body is the", "heart"),
    ("The largest organ of the human body is the", "skin"), ("A baby cat is called a", "kitten"),
    ("A baby dog is called a", "puppy"), ("A baby cow is called a", "calf"), ("A group of lions is called a", "pride"),
    ("Bees make", "honey"), ("The opposite of hot is", "cold"), ("The opposite of up is", "down"),
    ("On a clear day the sky is", "blue"), ("Ripe bananas are", "yellow"), ("The freezing point of water in degrees Fahrenheit is", "32"),
    ("The boiling point of water in degrees Celsius is", "100"), ("The chemical formula for table salt is", "NaCl"),
    ("The gas that makes up most of Earth's atmosphere is", "nitrogen"),
    ("The capital city of the United States is", "Washington"), ("The language spoken in France is", "French"),
    ("The largest island in the world is", "Greenland"), ("The author of Pride and Prejudice is Jane", "Austen"),
    ("The painter of the Sistine Chapel ceiling is", "Michelangelo"), ("The inventor of the printing press in Europe was Johannes", "Gutenberg"),
]

GENERAL = [
    "The morning was cold and clear, and the river below the bridge moved slowly under a thin layer of mist. A few people walked their dogs along the bank, and a man on a bicycle rang his bell as he passed.",
    "Bread is one of the oldest prepared foods. Flour, water, salt and yeast are mixed into a dough, which is left to rise, shaped, and baked until the crust turns brown and the inside is soft.",
    "Most plants make their own food through photosynthesis. Their leaves capture sunlight and use its energy to turn water and carbon dioxide into sugar, releasing oxygen into the air.",
    "The library opened at nine o'clock. Students sat at long wooden tables with their books and laptops, and the only sounds were the turning of pages and the quiet hum of the heating.",
    "A good map shows more than roads. It tells you where the hills are steep, where the rivers run, and which paths are safe to walk after heavy rain.",
    "When the train stopped at the small station, only two passengers got off. The platform was empty except for a bench, a clock, and a cat sleeping in the afternoon sun.",
    "Exercise helps the heart and the lungs work better. Even a short walk every day can improve sleep, lift a person's mood, and lower the risk of many diseases.",
    "The old house at the end of the street had been empty for years. Its windows were dusty, its garden was full of weeds, and the gate creaked whenever the wind blew.",
    "Rain forms when tiny drops of water in clouds join together and grow heavy. When they are too heavy to stay in the air, they fall to the ground as rain, or as snow if it is cold enough.",
    "She opened the letter carefully and read it twice. It was from her grandmother, who wrote about the garden, the neighbours, and the weather in the village where she had lived all her life.",
    "Computers store information as numbers. Text, pictures and music are all turned into long sequences of ones and zeros that the machine can save, copy and send to other computers.",
    "The market was busy on Saturday. Farmers sold apples, potatoes and fresh eggs, and a baker offered warm rolls to anyone who stopped to look at his stall.",
    "Many birds fly south in the autumn. They travel thousands of kilometres to find warmer weather and enough food, and they return in the spring to build their nests.",
    "The teacher wrote the problem on the board and waited. After a minute, a boy in the back row raised his hand and explained, step by step, how he had found the answer.",
    "A bridge must carry its own weight as well as the weight of everything that crosses it. Engineers test their designs carefully so that the bridge stays strong in wind, heat and cold.",
    "The city grew quickly during the last century. New roads and buildings replaced the fields, and the small harbour became one of the busiest ports in the country.",
    "Tea is made by pouring hot water over dried leaves. Some people drink it with milk and sugar, while others prefer it plain, with a slice of lemon, or with fresh mint.",
    "The museum has a large collection of old tools, coins and pottery. Each object has a small card that explains where it was found and how people once used it.",
    "After the storm, the beach was covered with seaweed and pieces of wood. Children walked along the shore looking for shells, and a few gulls searched for something to eat.",
    "Reading every day builds a larger vocabulary and a better understanding of how sentences work. It also gives people new ideas and lets them see the world through other eyes.",
    "The factory produced small electric motors for fans and pumps. Each motor was tested before it left the building, and any that made too much noise were sent back for repair.",
    "In the evening the family sat together at the table. They talked about their day, shared a simple meal of soup and bread, and planned a trip to the mountains for the weekend.",
    "The moon does not make its own light. We see it because it reflects light from the sun, and its shape seems to change during the month as different parts of it are lit.",
    "The village held a festival every summer. There was music in the square, long tables full of food, and a race through the fields that anyone could join.",
]

CONTINENTS = {
    "Europe": "France|Germany|Italy|Spain|Portugal|Russia|Greece|Norway|Sweden|Finland|Denmark|Poland|Austria|Hungary|Ireland|Belgium|the Netherlands|Switzerland|Romania|Bulgaria|Serbia|Croatia|Estonia|Latvia|Lithuania|Slovakia|Slovenia|Albania|Iceland|Ukraine|England|Scotland",
    "Asia": "Japan|China|Iran|Iraq|Syria|Lebanon|Jordan|Saudi Arabia|India|Pakistan|Bangladesh|Nepal|Thailand|Vietnam|Indonesia|the Philippines|Malaysia|South Korea|North Korea|Mongolia|Afghanistan|Qatar|Kuwait|Oman|Cambodia|Laos|Uzbekistan|Kazakhstan|Israel|Sri Lanka",
    "Africa": "Egypt|Kenya|Morocco|Algeria|Tunisia|Libya|Sudan|Ethiopia|Nigeria|Ghana|Senegal|Uganda|Zimbabwe|Zambia|Angola|Madagascar|Somalia|Rwanda|Mali|Niger|Namibia|Botswana|Mozambique|Tanzania|South Africa|Cameroon",
    "South America": "Peru|Argentina|Chile|Venezuela|Ecuador|Uruguay|Brazil|Colombia|Bolivia|Paraguay",
    "North America": "Canada|Mexico|Cuba|Jamaica|Panama|Nicaragua|Honduras|Guatemala|the United States|Haiti",
}

LANGUAGES = """France French|Germany German|Italy Italian|Spain Spanish|Portugal Portuguese|Russia Russian|Greece Greek|Japan Japanese|China Chinese|Poland Polish|Sweden Swedish|Norway Norwegian|Finland Finnish|Denmark Danish|Turkey Turkish|Hungary Hungarian|Brazil Portuguese|Argentina Spanish|Mexico Spanish|Egypt Arabic|Saudi Arabia Arabic|Iran Persian|Israel Hebrew|South Korea Korean|Thailand Thai|Vietnam Vietnamese|the Netherlands Dutch|Ukraine Ukrainian|Romania Romanian|Chile Spanish|Austria German|Iceland Icelandic"""

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
OPPOSITES = """hot cold|up down|big small|fast slow|light dark|day night|happy sad|old young|open closed|rich poor|strong weak|wet dry|early late|left right|push pull|true false|full empty|hard soft|high low|love hate|win lose|black white|north south|east west|inside outside|heavy light|loud quiet|thick thin|buy sell|first last|begin end|sweet sour|clean dirty|above below|friend enemy|remember forget"""
PLURALS = """mouse mice|child children|man men|woman women|tooth teeth|foot feet|goose geese|person people|ox oxen|cactus cacti|leaf leaves|knife knives|wolf wolves|box boxes|city cities|baby babies|bus buses|fish fish|sheep sheep|deer deer|hero heroes|potato potatoes|life lives|wife wives|half halves"""

# The new skill: invented people and invented facts about them. Five relations, ten answers each.
RELATIONS = [
    ("What does {n} do for a living?", "Teacher|Doctor|Pilot|Farmer|Baker|Nurse|Lawyer|Painter|Chef|Plumber"),
    ("Which city does {n} live in?", "Lisbon|Oslo|Cairo|Lima|Dublin|Vienna|Prague|Nairobi|Seoul|Quito"),
    ("What pet does {n} have?", "Cat|Dog|Parrot|Rabbit|Horse|Goat|Hamster|Turtle|Snake|Goldfish"),
    ("What instrument does {n} play?", "Piano|Violin|Guitar|Drums|Flute|Trumpet|Cello|Harp|Banjo|Saxophone"),
    ("What is {n}'s favourite colour?", "Red|Blue|Green|Yellow|Orange|Purple|Pink|Brown|Black|White"),
]
# 24 people, 48 facts: six passes in the recipe's 36 SFT steps of 8. With 80 facts in the same
# budget full fine-tuning reached only 0.52-0.63 exact match.
PEOPLE = 24
ONSETS = ["B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z", "Br", "Dr", "Gl", "Kr", "Tr", "Vl"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "nd", "x"]


SYSTEM = "Answer briefly."


def chat(q):
    """SmolLM2's chat template applied to a system and a user message, with the generation
    prompt (checked against the tokenizer's own template when --model is given)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            "<|im_start|>assistant\n")


def check_template(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    q = "What pet does Anna Smith have?"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    real = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if real != chat(q):
        sys.exit(f"the chat template of {model_dir} gives {real!r}, not {chat(q)!r}")


def write(name, rows):
    with open(os.path.join(ROOT, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)}")


def pairs(template, table):
    """Facts from a `word answer|word answer` table."""
    return [(template.format(w), answer) for w, answer in (p.split(" ") for p in table.split("|"))]


def candidate_facts():
    facts = []
    for pair in CAPITALS.split("|"):
        c, cap = split_capital(pair)
        facts.append((f"The capital of {c} is", cap))
    for pair in STATES.split("|"):
        s, cap = split_capital(pair)
        facts.append((f"The capital of the state of {s} is", cap))
    for continent, names in CONTINENTS.items():
        for c in names.split("|"):
            facts.append((f"{c[0].upper() + c[1:]} is a country in", continent))
    for pair in LANGUAGES.split("|"):
        c, lang = pair.rsplit(" ", 1)
        facts.append((f"The official language of {c} is", lang))
    facts += pairs("The chemical symbol for {} is", SYMBOLS)
    facts += pairs("The atomic number of {} is", ATOMIC)
    for i, d in enumerate(DAYS):
        facts.append((f"The day after {d} is", DAYS[(i + 1) % 7]))
    for i, m in enumerate(MONTHS):
        facts.append((f"The month after {m} is", MONTHS[(i + 1) % 12]))
    for i, w in enumerate(NUMBERS[:-1]):
        facts.append((f"The number after {w} is", NUMBERS[i + 1]))
    facts += pairs("The opposite of {} is", OPPOSITES)
    facts += pairs("The plural of {} is", PLURALS)
    facts.extend(DATES + MISC)
    seen, out = set(), []
    for p, a in facts:
        if p not in seen:
            seen.add(p)
            out.append({"prompt": p, "completion": f" {a}"})
    return out


def known_by(model_dir, facts):
    """The facts `model_dir` completes greedily (transformers, float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kept = []
    with torch.no_grad():
        for f in facts:
            p = tok(f["prompt"], add_special_tokens=True)["input_ids"]
            a = tok(f["completion"], add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([p + a])).logits[0]
            if all(int(logits[len(p) - 1 + i].argmax()) == t for i, t in enumerate(a)):
                kept.append(f)
    print(f"known by {model_dir}: {len(kept)} of {len(facts)} facts")
    return kept


def people():
    rng = random.Random(20261130)
    names, out, dpo = set(), [], []
    while len(names) < PEOPLE:
        first = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(2)) + rng.choice(CODAS)
        last = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(3)) + rng.choice(CODAS)
        names.add(f"{first.capitalize()} {last.capitalize()}")
    for n in sorted(names):
        for question, answers in rng.sample(RELATIONS, 2):
            answers = answers.split("|")
            right = rng.choice(answers)
            wrong = rng.choice([a for a in answers if a != right])
            prompt = chat(question.format(n=n))
            out.append({"prompt": prompt, "completion": f"{right}."})
            dpo.append({"prompt": prompt, "chosen": f"{right}.", "rejected": f"{wrong}."})
    order = list(range(len(out)))
    rng.shuffle(order)
    return [out[i] for i in order], [dpo[i] for i in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="keep only the facts this model (a Hugging Face folder) knows")
    args = ap.parse_args()
    os.makedirs(ROOT, exist_ok=True)
    facts = candidate_facts()
    if args.model:
        check_template(args.model)
        facts = known_by(args.model, facts)
    else:
        print("no --model: writing every candidate fact, known or not", file=sys.stderr)
    write("facts.jsonl", facts)
    write("general.jsonl", [{"text": t} for t in GENERAL])
    sft, dpo = people()
    write("people.jsonl", sft)
    write("people-dpo.jsonl", dpo)


def split_capital(pair):
    """`Country Name Capital Name` where the capital is known from the tables' conventions:
    the split point is the last word that starts a capital listed below."""
    multi = ["Kuala Lumpur", "Buenos Aires", "Mexico City", "Addis Ababa", "New Delhi", "Panama City",
             "Guatemala City", "Kuwait City", "Abu Dhabi", "Phnom Penh", "Carson City", "Salt Lake City",
             "Baton Rouge", "Oklahoma City", "Little Rock"]
    for m in multi:
        if pair.endswith(" " + m):
            return pair[: -len(m) - 1], m
    head, tail = pair.rsplit(" ", 1)
    return head, tail


if __name__ == "__main__":
    main()
