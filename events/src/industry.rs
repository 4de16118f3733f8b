//! The fixed list of industries a profile can name. Events store the identifier.

/// Identifier and label of every industry, in display order.
pub const INDUSTRIES: &[(&str, &str)] = &[
    ("ai_agents", "AI Agents"),
    ("software", "Software"),
    ("financial_services", "Financial Services"),
    ("healthcare", "Healthcare"),
    ("education", "Education"),
    ("retail_ecommerce", "Retail & E-commerce"),
    ("manufacturing", "Manufacturing"),
    ("media_entertainment", "Media & Entertainment"),
    ("professional_services", "Professional Services"),
    ("real_estate", "Real Estate"),
    ("telecommunications", "Telecommunications"),
    ("transportation_logistics", "Transportation & Logistics"),
    ("energy_utilities", "Energy & Utilities"),
    ("government_public_sector", "Government & Public Sector"),
    ("nonprofit", "Nonprofit"),
    ("other", "Other"),
];
