#!/usr/bin/env python3
"""Writes recipes/data/smollm2/*.jsonl, the data of recipes/smollm2-sft-dpo.yaml.

Deterministic (fixed seed) and written by hand for this project; rerun to regenerate:

    python3 scripts/make-smollm2-data.py

- facts.jsonl        {"prompt","completion"}: short factual statements with known answers
                     (capitals, chemical symbols, atomic numbers, dates, general knowledge),
                     scored by the knowledge-retention eval (greedy exact match of the answer
                     tokens, and the answer's log-probability).
- general.jsonl      {"text"}: plain English paragraphs, for the loss on general text.
- sft-train.jsonl,   {"prompt","completion"}: the new skill, arithmetic word problems answered in
  sft-eval.jsonl     a fixed format ("The answer is N."), in SmolLM2's chat format.
- dpo-train.jsonl,   {"prompt","chosen","rejected"}: the same kind of problems, the correct answer
  dpo-eval.jsonl     in the format against a wrong one (off by a little) or a rambling one.
"""

import json
import os
import random

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

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Leo", "Maya", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Umar"]
THINGS = ["apples", "books", "marbles", "stickers", "pencils", "coins", "cookies", "stamps", "shells", "cards", "eggs", "flowers"]
ADD = [
    "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
    "{n} had {a} {t}. A friend gave {n} {b} more {t}. How many {t} does {n} have?",
    "There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in total?",
    "{n} bought {a} {t} on Monday and {b} {t} on Tuesday. How many {t} did {n} buy?",
]
SUB = [
    "{n} has {a} {t} and gives away {b}. How many {t} are left?",
    "There were {a} {t} on the shelf. {n} took {b} of them. How many {t} are still on the shelf?",
    "{n} had {a} {t} and lost {b}. How many {t} does {n} have now?",
]
ANSWER = "The answer is {x}."


def chat(q):
    return f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


def problem(rng):
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    if rng.random() < 0.5:
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        return rng.choice(ADD).format(n=n, t=t, a=a, b=b), a + b
    a = rng.randint(10, 60)
    b = rng.randint(1, a - 1)
    return rng.choice(SUB).format(n=n, t=t, a=a, b=b), a - b


def write(name, rows):
    with open(os.path.join(ROOT, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)}")


def main():
    os.makedirs(ROOT, exist_ok=True)
    facts = []
    for pair in CAPITALS.split("|"):
        c, cap = pair.rsplit(" ", 1) if pair.count(" ") == 1 else split_capital(pair)
        facts.append({"prompt": f"The capital of {c} is", "completion": f" {cap}"})
    for pair in STATES.split("|"):
        s, cap = split_capital(pair)
        facts.append({"prompt": f"The capital of the state of {s} is", "completion": f" {cap}"})
    for pair in SYMBOLS.split("|"):
        e, sym = pair.split(" ")
        facts.append({"prompt": f"The chemical symbol for {e} is", "completion": f" {sym}"})
    for pair in ATOMIC.split("|"):
        e, z = pair.split(" ")
        facts.append({"prompt": f"The atomic number of {e} is", "completion": f" {z}"})
    for p, a in DATES + MISC:
        facts.append({"prompt": p, "completion": f" {a}"})
    write("facts.jsonl", facts)
    write("general.jsonl", [{"text": t} for t in GENERAL])

    rng = random.Random(20250)
    seen = set()

    def unique(k):
        out = []
        while len(out) < k:
            q, x = problem(rng)
            if q not in seen:
                seen.add(q)
                out.append((q, x))
        return out

    write("sft-train.jsonl", [{"prompt": chat(q), "completion": ANSWER.format(x=x)} for q, x in unique(400)])
    write("sft-eval.jsonl", [{"prompt": chat(q), "completion": ANSWER.format(x=x)} for q, x in unique(100)])

    def dpo(k):
        rows = []
        for q, x in unique(k):
            if rng.random() < 0.7:
                wrong = x + rng.choice([-2, -1, 1, 2, 10])
                rejected = ANSWER.format(x=max(wrong, 0) if wrong != x else x + 1)
            else:
                rejected = f"Let me think about this. There are some {rng.choice(THINGS)} and we need to count them carefully."
            rows.append({"prompt": chat(q), "chosen": ANSWER.format(x=x), "rejected": rejected})
        return rows

    write("dpo-train.jsonl", dpo(300))
    write("dpo-eval.jsonl", dpo(60))


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
